// Knowledge: collections (create, delete), drag-and-drop multi-file upload with progress and
// per-file errors, the document list, and a search box to try retrieval.

import { h, put, confirmDialog, toast, nextId } from './dom.js';
import { t, fmtDate, fmtBytes, fmtNumber } from './i18n.js';
import { api, upload } from './api.js';

const TYPES = {
  txt: 'text/plain', text: 'text/plain', md: 'text/markdown', markdown: 'text/markdown',
  html: 'text/html', htm: 'text/html', pdf: 'application/pdf',
  docx: 'application/vnd.openxmlformats-officedocument.wordprocessingml.document',
};

/** The Content-Type to upload a file as: from its extension, else what the browser says. */
export function typeOf(file) {
  const ext = (/\.([^.]+)$/.exec(file.name) || [])[1];
  return TYPES[(ext || '').toLowerCase()] || file.type || 'application/octet-stream';
}

const PARALLEL = 2;

export class KnowledgeView {
  /** `opts.me`: what the key may do (GET /v1/me); without it everything is offered. */
  constructor(opts = {}) {
    this.me = opts.me || null;
    this.selected = null;
    this.queue = [];
    this.running = 0;
    this.build();
  }

  build() {
    const nameId = nextId('colname');
    this.colName = h('input', { id: nameId, name: 'collection', required: true, maxlength: 64, pattern: '[\\p{L}\\p{N}._\\-]+', autocomplete: 'off' });
    this.colMsg = h('p', { class: 'formmsg', role: 'alert' });
    const create = this.createForm = h('form', { class: 'stack' },
      h('label', { for: nameId }, t('kb.newname')),
      h('div', { class: 'row' }, this.colName, h('button', { type: 'submit', class: 'primary' }, t('kb.create'))),
      this.colMsg);
    create.addEventListener('submit', (e) => { e.preventDefault(); this.createCollection(); });
    this.colList = h('ul', { class: 'col-list' });
    this.notice = h('p', { class: 'notice', hidden: true, role: 'status' });

    this.fileInput = h('input', { type: 'file', multiple: true, class: 'sr-only', tabindex: '-1', 'aria-hidden': 'true',
      accept: '.txt,.md,.markdown,.html,.htm,.pdf,.docx,text/plain,text/markdown,text/html,application/pdf' });
    this.fileInput.addEventListener('change', () => { this.enqueue([...this.fileInput.files]); this.fileInput.value = ''; });
    this.dropText = h('p', { class: 'drop-title' });
    this.drop = h('div', { class: 'dropzone' },
      this.dropText, h('p', { class: 'muted' }, t('kb.drop.types')),
      h('button', { type: 'button', class: 'primary', onclick: () => this.fileInput.click() }, t('kb.choosefiles')),
      this.fileInput);
    for (const ev of ['dragenter', 'dragover']) {
      this.drop.addEventListener(ev, (e) => { e.preventDefault(); e.dataTransfer.dropEffect = 'copy'; this.drop.classList.add('over'); });
    }
    this.drop.addEventListener('dragleave', (e) => { if (!this.drop.contains(e.relatedTarget)) this.drop.classList.remove('over'); });
    this.drop.addEventListener('drop', (e) => {
      e.preventDefault();
      this.drop.classList.remove('over');
      this.enqueue([...(e.dataTransfer?.files || [])]);
    });
    this.uploads = h('ul', { class: 'uploads', 'aria-label': t('kb.uploads') });
    this.docs = h('div', { class: 'docs' });

    const qId = nextId('q');
    const modeId = nextId('mode');
    const kId = nextId('k');
    this.query = h('input', { id: qId, type: 'search', name: 'query', required: true, autocomplete: 'off' });
    this.mode = h('select', { id: modeId, name: 'mode' },
      h('option', { value: 'hybrid' }, t('kb.mode.hybrid')),
      h('option', { value: 'bm25' }, t('kb.mode.bm25')),
      h('option', { value: 'vector' }, t('kb.mode.vector')));
    this.topK = h('input', { id: kId, type: 'number', name: 'top_k', min: 1, max: 50, value: '5', class: 'narrow' });
    this.results = h('ol', { class: 'results', 'aria-live': 'polite' });
    const search = h('form', { class: 'search' },
      h('div', { class: 'field grow' }, h('label', { for: qId }, t('kb.query')), this.query),
      h('div', { class: 'field' }, h('label', { for: modeId }, t('kb.mode')), this.mode),
      h('div', { class: 'field' }, h('label', { for: kId }, t('kb.topk')), this.topK),
      h('button', { type: 'submit', class: 'primary' }, t('kb.go')));
    search.addEventListener('submit', (e) => { e.preventDefault(); this.search(); });

    this.title = h('h2', null, '');
    this.detail = h('div', { class: 'kb-detail', hidden: true },
      this.title, this.drop, this.uploads,
      h('h3', null, t('kb.documents')), this.docs,
      h('h3', null, t('kb.search')), search, this.results);
    this.pick = h('p', { class: 'muted' }, t('kb.pick'));
    this.el = h('div', { class: 'kb' },
      h('aside', { class: 'collections', 'aria-label': t('kb.collections') },
        h('h2', null, t('kb.collections')), create, this.colList),
      h('section', { class: 'kb-main', 'aria-label': t('nav.kb') }, this.notice, this.pick, this.detail));
  }

  show() { this.refresh(); }

  /** Whether this key may change collection `name` (upload, delete): as /v1/me says. */
  mayWrite(name) {
    return !this.me || this.me.collections.some((c) => c.name === name && c.write);
  }

  async refresh() {
    let list;
    try {
      // The key's collections change as they are created and deleted: ask again each time
      // (the object is the one the chat view holds, so it sees the same).
      const [cols, fresh] = await Promise.all([
        api('GET', '/v1/kb/collections'), this.me ? api('GET', '/v1/me') : null]);
      list = cols.data || [];
      if (fresh) Object.assign(this.me, fresh);
    } catch (e) {
      this.notice.hidden = false;
      put(this.notice, e.status === 404 ? t('kb.unavailable') : e.status === 403 ? t('kb.forbidden') : e.friendly);
      put(this.colList);
      this.createForm.hidden = true;
      this.pick.hidden = true;
      return;
    }
    this.notice.hidden = true;
    // Creating needs a kb:write scope: a read-only key is not offered a form that fails.
    this.createForm.hidden = !!this.me && !this.me.can.create_collections;
    this.pick.hidden = !!this.selected;
    this.collections = list;
    if (this.selected && !list.some((c) => c.name === this.selected)) this.select(null);
    put(this.colList, list.map((c) => h('li', { class: c.name === this.selected ? 'current' : null },
      h('button', { type: 'button', class: 'col', 'aria-current': c.name === this.selected ? 'true' : null, onclick: () => this.select(c.name) },
        h('span', { class: 'name' }, c.name),
        h('span', { class: 'muted' }, t('kb.docs.n', { d: fmtNumber(c.documents), c: fmtNumber(c.chunks) }))),
      this.mayWrite(c.name) ? h('button', {
        type: 'button', class: 'ghost icon', 'aria-label': t('kb.deletecol', { name: c.name }),
        onclick: () => this.deleteCollection(c.name),
      }, '✕') : null)));
    if (!this.selected && list.length === 1) this.select(list[0].name);
  }

  select(name) {
    this.selected = name;
    this.detail.hidden = !name;
    this.pick.hidden = !!name;
    put(this.results);
    if (!name) return;
    put(this.title, name);
    put(this.dropText, t('kb.drop', { name }));
    this.drop.hidden = !this.mayWrite(name);
    for (const li of this.colList.children) {
      const b = li.querySelector('button.col');
      const cur = b && b.querySelector('.name').textContent === name;
      li.classList.toggle('current', cur);
      if (b) { if (cur) b.setAttribute('aria-current', 'true'); else b.removeAttribute('aria-current'); }
    }
    this.loadDocs();
  }

  async createCollection() {
    const name = this.colName.value.trim();
    this.colMsg.className = 'formmsg';
    put(this.colMsg);
    if (!name) return;
    try {
      await api('POST', '/v1/kb/collections', { name });
      this.colName.value = '';
      toast(t('kb.created', { name }));
      this.selected = name;
      await this.refresh();
      this.select(name);
    } catch (e) {
      put(this.colMsg, e.friendly);
      this.colMsg.classList.add('error');
    }
  }

  async deleteCollection(name) {
    if (!(await confirmDialog(t('kb.deletecol.confirm', { name }), { ok: t('delete'), cancel: t('cancel') }))) return;
    try {
      await api('DELETE', `/v1/kb/collections/${encodeURIComponent(name)}`);
      if (this.selected === name) this.select(null);
      await this.refresh();
    } catch (e) { toast(e.friendly); }
  }

  async loadDocs() {
    const col = this.selected;
    if (!col) return;
    let list;
    try {
      list = (await api('GET', `/v1/kb/collections/${encodeURIComponent(col)}/documents`)).data || [];
    } catch (e) {
      put(this.docs, h('p', { class: 'error' }, e.friendly));
      return;
    }
    if (col !== this.selected) return;
    if (!list.length) { put(this.docs, h('p', { class: 'muted' }, t('kb.nodocs'))); return; }
    const write = this.mayWrite(col);
    const head = ['kb.col.file', 'kb.col.kind', 'kb.col.pages', 'kb.col.chunks', 'kb.col.size', 'kb.col.added', write ? 'kb.col.actions' : null]
      .filter(Boolean).map((k) => h('th', { scope: 'col' }, t(k)));
    const rows = list.map((d) => h('tr', null,
      h('th', { scope: 'row', class: 'file' }, d.filename, d.title && d.title !== d.filename ? h('span', { class: 'muted block' }, d.title) : null),
      h('td', null, d.kind || ''),
      h('td', { class: 'num' }, d.pages ?? '–'),
      h('td', { class: 'num' }, fmtNumber(d.chunks)),
      h('td', { class: 'num' }, fmtBytes(d.bytes)),
      h('td', null, fmtDate(d.created_at)),
      write ? h('td', null, h('button', {
        type: 'button', class: 'small ghost danger-text', 'aria-label': t('kb.deletedoc', { name: d.filename }),
        onclick: () => this.deleteDoc(d),
      }, t('delete'))) : null));
    put(this.docs, h('div', { class: 'table-wrap' }, h('table', null, h('thead', null, h('tr', null, head)), h('tbody', null, rows))));
  }

  async deleteDoc(d) {
    if (!(await confirmDialog(t('kb.deletedoc.confirm', { name: d.filename }), { ok: t('delete'), cancel: t('cancel') }))) return;
    try {
      await api('DELETE', `/v1/kb/collections/${encodeURIComponent(this.selected)}/documents/${encodeURIComponent(d.id)}`);
      await this.loadDocs();
      this.refresh();
    } catch (e) { toast(e.friendly); }
  }

  // --- uploads ------------------------------------------------------------------------------

  enqueue(files) {
    const col = this.selected;
    if (!col) return;
    for (const file of files) {
      const bar = h('progress', { max: 1, value: 0, 'aria-label': file.name });
      const state = h('span', { class: 'state' }, t('kb.uploading'));
      const li = h('li', { class: 'upload' }, h('span', { class: 'file' }, file.name), h('span', { class: 'muted' }, fmtBytes(file.size)), bar, state);
      this.uploads.prepend(li);
      this.queue.push({ file, col, li, bar, state });
    }
    this.pump();
  }

  pump() {
    while (this.running < PARALLEL && this.queue.length) {
      const job = this.queue.shift();
      this.running += 1;
      this.send(job).finally(() => { this.running -= 1; this.pump(); });
    }
  }

  async send({ file, col, li, bar, state }) {
    const path = `/v1/kb/collections/${encodeURIComponent(col)}/documents?filename=${encodeURIComponent(file.name)}`;
    try {
      const doc = await upload(path, file, typeOf(file), (f) => {
        bar.value = f;
        if (f >= 1) put(state, t('kb.processing'));
      });
      bar.value = 1;
      li.classList.add('ok');
      const one = doc && doc.chunks === 1 ? '.1' : '';
      put(state, t(`${doc && doc.replaced ? 'kb.replaced' : 'kb.uploaded'}${one}`, { chunks: fmtNumber(doc && doc.chunks) }));
      if (col === this.selected) { this.loadDocs(); this.refresh(); }
    } catch (e) {
      // The bar keeps its grid cell (hidden by CSS), so a long error stays in the last column
      // instead of squeezing the file name out.
      li.classList.add('failed');
      put(state, e.friendly || String(e));
      state.setAttribute('role', 'alert');
    }
  }

  // --- search --------------------------------------------------------------------------------

  async search() {
    const query = this.query.value.trim();
    if (!query || !this.selected) return;
    put(this.results, h('li', { class: 'muted' }, '…'));
    try {
      const r = await api('POST', '/v1/kb/search', {
        collections: [this.selected], query, top_k: Math.max(1, Math.min(50, Number(this.topK.value) || 5)), mode: this.mode.value,
      });
      const res = r.results || [];
      if (!res.length) { put(this.results, h('li', { class: 'muted' }, t('kb.noresults'))); return; }
      put(this.results, res.map((x) => h('li', { class: 'result' },
        h('div', { class: 'result-head' },
          h('span', { class: 'file' }, x.filename || ''),
          x.heading ? h('span', { class: 'muted' }, x.heading) : null,
          x.page ? h('span', { class: 'muted' }, t('kb.page', { n: x.page })) : null,
          h('span', { class: 'score' }, t('kb.score', { s: fmtNumber(x.score, 3) }))),
        h('p', { class: 'result-text' }, x.text || ''))));
    } catch (e) {
      put(this.results, h('li', { class: 'error' }, e.friendly));
    }
  }
}
