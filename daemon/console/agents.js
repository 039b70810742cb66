// Agents (keys with the `admin` scope): the list of agents, a form to create or edit one (its
// tools offered from /v1/admin/tools, its collections from the knowledge base), delete with a
// confirmation, and a test chat with the agent: the chat view itself, bound to `agent:NAME`.

import { h, put, confirmDialog, toast, nextId } from './dom.js';
import { t, fmtDate } from './i18n.js';
import { api } from './api.js';
import { ChatView, isAgent } from './chat.js';

const MAX_STEPS = 16;
const DEFAULT_STEPS = 6;

/** Lines of a textarea, trimmed, without the empty ones. */
const lines = (text) => text.split('\n').map((l) => l.trim()).filter(Boolean);

/** A number input's value, or null when empty. */
const numOrNull = (el) => (el.value.trim() === '' ? null : Number(el.value));

export class AgentsView {
  constructor() {
    this.agents = [];
    this.selected = null; // the agent being edited, or null for a new one
    this.tools = null; // the daemon's tool list, or an ApiError
    this.servers = [];
    this.collections = null; // names, or an ApiError
    this.models = [];
    this.chat = null;
    this.chatFor = null;
    this.build();
  }

  build() {
    this.list = h('ul', { class: 'col-list agent-list' });
    this.listMsg = h('p', { class: 'muted', hidden: true });
    const newBtn = h('button', { type: 'button', class: 'primary small', onclick: () => this.edit(null) }, `+ ${t('agents.new')}`);

    const field = (label, input, hint) => {
      const id = nextId('ag');
      input.id = id;
      let hintEl = null;
      if (hint) {
        hintEl = h('span', { class: 'muted hint', id: `${id}-hint` }, hint);
        input.setAttribute('aria-describedby', hintEl.id);
      }
      return h('div', { class: 'field' }, h('label', { for: id }, label), input, hintEl);
    };
    this.f = {
      name: h('input', { name: 'name', required: true, maxlength: 64, autocomplete: 'off', spellcheck: 'false' }),
      description: h('input', { name: 'description', autocomplete: 'off' }),
      model: h('select', { name: 'model' }),
      instructions: h('textarea', { name: 'instructions', rows: 5 }),
      max_steps: h('input', { name: 'max_steps', type: 'number', min: 1, max: MAX_STEPS, step: 1, required: true, class: 'narrow', value: String(DEFAULT_STEPS) }),
      reasoning_budget: h('input', { name: 'reasoning_budget', type: 'number', min: 0, step: 1, class: 'narrow', placeholder: t('agents.budget.none') }),
      temperature: h('input', { name: 'temperature', type: 'number', min: 0, max: 2, step: 0.1, class: 'narrow', placeholder: t('chat.default') }),
      fetch_sites: h('textarea', { name: 'fetch_sites', rows: 2, class: 'mono', spellcheck: 'false', placeholder: 'one URL prefix per line' }),
    };
    this.toolBox = h('ul', { class: 'checks tool-checks', 'aria-live': 'polite' });
    this.toolNote = h('p', { class: 'muted formnote', hidden: true });
    this.colBox = h('ul', { class: 'checks' });
    this.colNote = h('p', { class: 'muted formnote', hidden: true });
    this.msg = h('p', { class: 'formmsg', role: 'alert' });
    this.submit = h('button', { type: 'submit', class: 'primary' }, t('agents.create'));
    this.deleteBtn = h('button', { type: 'button', class: 'danger', hidden: true, onclick: () => this.remove() }, t('agents.delete'));
    this.heading = h('h2', null, t('agents.new'));
    this.meta = h('p', { class: 'muted', hidden: true });
    this.form = h('form', { class: 'agent-form card', novalidate: true },
      this.heading, this.meta,
      h('div', { class: 'agent-grid' },
        field(t('agents.name'), this.f.name, t('agents.name.hint')),
        field(t('agents.description'), this.f.description),
        field(t('agents.model'), this.f.model)),
      field(t('agents.instructions'), this.f.instructions),
      h('fieldset', { class: 'field', name: 'tools' }, h('legend', null, t('agents.tools')), this.toolNote, this.toolBox),
      h('fieldset', { class: 'field', name: 'collections' }, h('legend', null, t('agents.collections')), this.colNote, this.colBox),
      h('div', { class: 'agent-grid' },
        field(t('agents.maxsteps'), this.f.max_steps, t('agents.maxsteps.hint', { n: MAX_STEPS })),
        field(t('agents.budget'), this.f.reasoning_budget),
        field(t('agents.temperature'), this.f.temperature)),
      field(t('agents.fetch'), this.f.fetch_sites, t('agents.fetch.hint')),
      this.msg,
      h('div', { class: 'row' }, this.submit, h('span', { class: 'spacer' }), this.deleteBtn));
    this.form.addEventListener('submit', (e) => { e.preventDefault(); this.save(); });
    for (const el of Object.values(this.f)) el.addEventListener('input', () => el.removeAttribute('aria-invalid'));

    this.testBox = h('div', { class: 'agent-test' });
    this.test = h('section', { class: 'card agent-test-card', 'aria-labelledby': 'agents-test' },
      h('h2', { id: 'agents-test' }, t('agents.test')), this.testBox);
    this.notice = h('p', { class: 'notice', hidden: true, role: 'status' });
    this.el = h('div', { class: 'kb agents' },
      h('aside', { class: 'collections', 'aria-label': t('agents.title') },
        h('div', { class: 'convs-head' }, h('h2', null, t('agents.title')), newBtn), this.listMsg, this.list),
      h('section', { class: 'kb-main agents-main', 'aria-label': t('agents.title') }, this.notice, this.form, this.test));
    this.edit(null);
  }

  show() { this.refresh(); }

  hide() {}

  destroy() { this.chat?.destroy(); }

  /** The agents, and what the form offers: tools, collections, models. */
  async refresh() {
    const [agents, tools, cols, models] = await Promise.allSettled([
      api('GET', '/v1/admin/agents'), api('GET', '/v1/admin/tools'), api('GET', '/v1/kb/collections'), api('GET', '/v1/models'),
    ]);
    if (agents.status === 'rejected') {
      const e = agents.reason;
      if (e.status === 401) return;
      this.notice.hidden = false;
      put(this.notice, e.status === 404 ? t('agents.unavailable') : e.friendly || String(e));
      this.form.hidden = true;
      this.test.hidden = true;
      put(this.list);
      return;
    }
    this.notice.hidden = true;
    this.form.hidden = false;
    this.agents = agents.value.data || [];
    this.tools = tools.status === 'fulfilled' ? tools.value.data || [] : tools.reason;
    this.servers = tools.status === 'fulfilled' ? tools.value.servers || [] : [];
    this.collections = cols.status === 'fulfilled' ? (cols.value.data || []).map((c) => c.name) : cols.reason;
    this.models = models.status === 'fulfilled' ? (models.value.data || []).map((m) => m.id).filter((id) => !isAgent(id)) : [];
    this.renderList();
    // What the form shows comes from the daemon again (another admin may have changed it).
    const cur = this.selected && this.agents.find((a) => a.name === this.selected.name);
    this.edit(cur || null, { keepChat: !!cur });
  }

  renderList() {
    this.listMsg.hidden = this.agents.length > 0;
    put(this.listMsg, t('agents.none'));
    put(this.list, this.agents.map((a) => {
      const cur = this.selected && this.selected.name === a.name;
      return h('li', { class: cur ? 'current' : null },
        h('button', { type: 'button', class: 'col', 'aria-current': cur ? 'true' : null, onclick: () => this.edit(a) },
          h('span', { class: 'name' }, a.name),
          a.description ? h('span', { class: 'muted' }, a.description) : null));
    }));
  }

  /** Fill the form with agent `a` (null: a new agent) and bind the test chat to it. */
  edit(a, { keepChat = false } = {}) {
    this.selected = a;
    const f = this.f;
    put(this.heading, a ? t('agents.edit', { name: a.name }) : t('agents.new'));
    this.meta.hidden = !a;
    if (a) put(this.meta, t('agents.updated', { date: fmtDate(a.updated || a.created) }));
    f.name.value = a ? a.name : '';
    f.name.readOnly = !!a;
    f.description.value = (a && a.description) || '';
    f.instructions.value = (a && a.instructions) || '';
    f.max_steps.value = String(a && a.max_steps ? a.max_steps : DEFAULT_STEPS);
    f.reasoning_budget.value = a && a.reasoning_budget !== null && a.reasoning_budget !== undefined ? String(a.reasoning_budget) : '';
    f.temperature.value = a && a.temperature !== null && a.temperature !== undefined ? String(a.temperature) : '';
    f.fetch_sites.value = ((a && a.fetch_sites) || []).join('\n');
    const models = [...this.models];
    if (a && a.model && !models.includes(a.model)) models.push(a.model);
    put(f.model, h('option', { value: '' }, t('agents.model.default')),
      models.map((m) => h('option', { value: m, selected: !!(a && a.model === m) }, m)));
    this.fillTools((a && a.tools) || []);
    this.fillCollections((a && a.collections) || []);
    for (const el of Object.values(f)) el.removeAttribute('aria-invalid');
    put(this.submit, a ? t('agents.save') : t('agents.create'));
    this.deleteBtn.hidden = !a;
    this.msg.className = 'formmsg';
    put(this.msg);
    for (const li of this.list.children) {
      const b = li.querySelector('button.col');
      const cur = !!a && b.querySelector('.name').textContent === a.name;
      li.classList.toggle('current', cur);
      if (cur) b.setAttribute('aria-current', 'true'); else b.removeAttribute('aria-current');
    }
    // The test chat goes on while the same agent is saved again (its next turn reads the change).
    if (!keepChat || this.chatFor !== (a ? a.name : null)) this.bindChat(a);
  }

  /** Checkboxes: each tool the daemon offers, `mcp:SERVER/*` per server, and chosen ones it no longer offers. */
  fillTools(chosen) {
    const want = new Set(chosen);
    const items = [];
    const box = (name, label, detail, disabled) => {
      const id = nextId('agt');
      const input = h('input', { type: 'checkbox', id, value: name, checked: want.has(name), disabled: disabled && !want.has(name) });
      want.delete(name);
      return h('li', null, input, h('label', { for: id }, h('span', { class: 'mono' }, label), detail ? h('span', { class: 'muted block' }, detail) : null));
    };
    const list = Array.isArray(this.tools) ? this.tools : [];
    this.toolNote.hidden = true;
    if (!Array.isArray(this.tools) && this.tools) {
      this.toolNote.hidden = false;
      put(this.toolNote, this.tools.friendly || String(this.tools));
    } else if (!list.length) {
      this.toolNote.hidden = false;
      put(this.toolNote, t('agents.tools.none'));
    }
    for (const tool of list) {
      const off = tool.available === false;
      const detail = off ? t('agents.tools.unavailable', { why: tool.reason || '' }) : tool.description;
      items.push(box(tool.name, tool.name, detail, off));
    }
    for (const s of this.servers) {
      const down = s.ok === false ? t('agents.tools.server.down', { why: s.error || '' }) : null;
      items.push(box(`mcp:${s.name}/*`, `mcp:${s.name}/*`, down || t('agents.tools.all', { server: s.name }), false));
    }
    for (const name of [...want]) items.push(box(name, name, t('agents.tools.missing'), false));
    put(this.toolBox, items);
  }

  fillCollections(chosen) {
    const want = new Set(chosen);
    const names = Array.isArray(this.collections) ? this.collections : [];
    this.colNote.hidden = true;
    if (!Array.isArray(this.collections) && this.collections) {
      this.colNote.hidden = false;
      const e = this.collections;
      put(this.colNote, e.status === 404 ? t('kb.unavailable') : e.status === 403 ? t('kb.forbidden') : e.friendly || String(e));
    } else if (!names.length) {
      this.colNote.hidden = false;
      put(this.colNote, t('agents.collections.none'));
    }
    const all = [...names, ...chosen.filter((c) => !names.includes(c))];
    put(this.colBox, all.map((name) => {
      const id = nextId('agc');
      return h('li', null, h('input', { type: 'checkbox', id, value: name, checked: want.has(name) }), h('label', { for: id }, name));
    }));
  }

  /** The form as the API's agent object (the name only for a new one). */
  body() {
    const f = this.f;
    const checked = (ul) => [...ul.querySelectorAll('input:checked')].map((b) => b.value);
    const b = {
      description: f.description.value.trim(),
      model: f.model.value || null,
      instructions: f.instructions.value,
      tools: checked(this.toolBox),
      collections: checked(this.colBox),
      max_steps: f.max_steps.value.trim() === '' ? DEFAULT_STEPS : Number(f.max_steps.value),
      reasoning_budget: numOrNull(f.reasoning_budget),
      temperature: numOrNull(f.temperature),
      fetch_sites: lines(f.fetch_sites.value),
    };
    if (!this.selected) b.name = f.name.value.trim();
    return b;
  }

  /** Create or save; the daemon checks every field, and its error shows at the form. */
  async save() {
    this.msg.className = 'formmsg';
    put(this.msg);
    for (const el of Object.values(this.f)) el.removeAttribute('aria-invalid');
    const body = this.body();
    if (!this.selected && !body.name) { this.fail(t('agents.name.empty'), 'name'); return; }
    this.submit.disabled = true;
    try {
      const a = this.selected
        ? await api('PATCH', `/v1/admin/agents/${encodeURIComponent(this.selected.name)}`, body)
        : await api('POST', '/v1/admin/agents', body);
      toast(t(this.selected ? 'agents.saved' : 'agents.created', { name: a.name }));
      const fresh = !this.selected;
      this.selected = a;
      await this.refresh();
      if (fresh) this.f.description.focus();
    } catch (e) {
      if (e.status !== 401) this.fail(e.friendly || String(e), e.param);
    } finally {
      this.submit.disabled = false;
    }
  }

  /** Show an error next to the form, marking the field it names (OpenAI `param`). */
  fail(text, param) {
    put(this.msg, text);
    this.msg.classList.add('error');
    const el = param && this.f[String(param).split(/[.[]/)[0]];
    if (el) { el.setAttribute('aria-invalid', 'true'); el.focus(); }
  }

  async remove() {
    const a = this.selected;
    if (!a) return;
    if (!(await confirmDialog(t('agents.delete.confirm', { name: a.name }), { ok: t('delete'), cancel: t('cancel') }))) return;
    try {
      await api('DELETE', `/v1/admin/agents/${encodeURIComponent(a.name)}`);
      toast(t('agents.deleted', { name: a.name }));
      this.selected = null;
      await this.refresh();
    } catch (e) {
      if (e.status !== 401) this.fail(e.friendly || String(e));
    }
  }

  /** The test chat: a chat view bound to `agent:NAME`, new for each agent; nothing is kept. */
  bindChat(a) {
    this.chat?.destroy();
    this.chat = null;
    this.chatFor = a ? a.name : null;
    if (!a) { put(this.testBox, h('p', { class: 'muted' }, t('agents.test.unsaved'))); return; }
    this.chat = new ChatView(null, { agent: a.name });
    put(this.testBox, this.chat.el);
  }
}
