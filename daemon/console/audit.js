// Audit (keys with the `admin` scope): the newest records of the daemon's audit log
// (GET /v1/admin/audit), newest first, filtered by kind, key (picked from /v1/admin/keys) and
// time range; a row opens to show every field of its record. Records carry strings that clients
// chose (key names, routes, error messages), so every value enters the page as text (dom.js).

import { h, put, nextId } from './dom.js';
import { t, fmtNumber, fmtDateTime } from './i18n.js';
import { api } from './api.js';

/** Records asked for at a time (the daemon returns the newest this many that pass the filter). */
const LIMIT = 200;
const KINDS = ['api', 'auth_failure', 'admin'];
/** Time ranges: option value → seconds back from now (0: the whole log). */
const RANGES = [['1h', 3600], ['24h', 86400], ['7d', 7 * 86400], ['all', 0]];

export class AuditView {
  constructor() {
    this.open = new Set(); // seq numbers of the rows shown opened
    this.loading = 0;
    this.build();
  }

  build() {
    const select = (label, options, value) => {
      const id = nextId('au');
      const el = h('select', { id, onchange: () => this.load() },
        options.map(([v, text]) => h('option', { value: v, selected: v === value }, text)));
      return [el, h('span', { class: 'field' }, h('label', { for: id }, label), el)];
    };
    let kindField, keyField, rangeField;
    [this.kind, kindField] = select(t('audit.kind'), [['', t('audit.all')], ...KINDS.map((k) => [k, t(`audit.kind.${k}`)])], '');
    [this.key, keyField] = select(t('audit.key'), [['', t('audit.allkeys')]], '');
    [this.range, rangeField] = select(t('audit.range'), RANGES.map(([v]) => [v, t(`audit.range.${v}`)]), '24h');
    this.kind.name = 'kind';
    this.key.name = 'key';
    this.range.name = 'range';
    this.refreshBtn = h('button', { type: 'button', class: 'primary', onclick: () => this.load() }, t('audit.refresh'));
    this.count = h('p', { class: 'muted audit-count', role: 'status' });
    this.body = h('div', { class: 'audit-body' });
    this.el = h('div', { class: 'audit' },
      h('h2', { id: 'audit-title' }, t('audit.title')),
      h('p', { class: 'muted' }, t('audit.lead')),
      h('div', { class: 'audit-filters', role: 'group', 'aria-labelledby': 'audit-title' },
        kindField, keyField, rangeField, h('span', { class: 'field end' }, this.refreshBtn)),
      this.count, this.body);
  }

  show() {
    this.loadKeys();
    this.load();
  }

  hide() {}

  destroy() {}

  /** The key picker: every key the daemon knows (revoked ones too: their records stay). */
  async loadKeys() {
    let keys;
    try {
      keys = (await api('GET', '/v1/admin/keys')).data || [];
    } catch {
      return; // the picker keeps "all keys"; the table shows the reason if the log fails too
    }
    const chosen = this.key.value;
    put(this.key, h('option', { value: '' }, t('audit.allkeys')),
      keys.map((k) => h('option', { value: k.id, selected: k.id === chosen },
        k.revoked ? t('audit.key.revoked', { name: k.name, id: k.id }) : t('audit.key.option', { name: k.name, id: k.id }))));
  }

  query() {
    const q = new URLSearchParams({ limit: String(LIMIT) });
    if (this.kind.value) q.set('kind', this.kind.value);
    if (this.key.value) q.set('key', this.key.value);
    const back = RANGES.find(([v]) => v === this.range.value)?.[1] || 0;
    if (back) q.set('since', String(Math.floor(Date.now() / 1000) - back));
    return q.toString();
  }

  async load() {
    const mine = ++this.loading;
    this.refreshBtn.disabled = true;
    this.body.setAttribute('aria-busy', 'true');
    let records;
    try {
      records = (await api('GET', `/v1/admin/audit?${this.query()}`)).data || [];
    } catch (e) {
      if (mine !== this.loading) return;
      this.refreshBtn.disabled = false;
      this.body.removeAttribute('aria-busy');
      put(this.count);
      if (e.status !== 401) put(this.body, h('p', { class: 'error', role: 'alert' }, e.friendly));
      return;
    }
    if (mine !== this.loading) return; // a later load answers instead
    this.refreshBtn.disabled = false;
    this.body.removeAttribute('aria-busy');
    this.render(records.slice().reverse());
  }

  render(records) {
    put(this.count, records.length >= LIMIT ? t('audit.count.limit', { n: fmtNumber(records.length) }) : t('audit.count', { n: fmtNumber(records.length) }));
    if (!records.length) { put(this.body, h('p', { class: 'muted audit-empty' }, t('audit.empty'))); return; }
    const head = ['audit.col.time', 'audit.col.kind', 'audit.col.key', 'audit.col.what', 'audit.col.model', 'audit.col.status', 'audit.col.tokens', 'audit.col.ms']
      .map((k, i) => h('th', { scope: 'col', class: i >= 6 ? 'num' : null }, t(k)));
    const rows = records.flatMap((r) => this.row(r));
    put(this.body, h('div', { class: 'table-wrap' },
      h('table', { class: 'audit-table' }, h('thead', null, h('tr', null, head)), h('tbody', null, rows))));
  }

  /** The summary row of a record and its details row (hidden until opened). */
  row(r) {
    const detailId = nextId('aud');
    const opened = this.open.has(r.seq);
    const toggle = h('button', {
      type: 'button', class: 'small ghost audit-toggle', 'aria-expanded': String(opened), 'aria-controls': detailId,
      'aria-label': t('audit.details', { seq: r.seq }),
    }, opened ? '▾' : '▸');
    const detail = h('tr', { class: 'audit-detail', id: detailId, hidden: !opened },
      h('td', { colspan: 8 }, this.fields(r)));
    toggle.addEventListener('click', () => {
      const now = detail.hidden;
      detail.hidden = !now;
      toggle.setAttribute('aria-expanded', String(now));
      put(toggle, now ? '▾' : '▸');
      if (now) this.open.add(r.seq); else this.open.delete(r.seq);
    });
    const what = r.kind === 'admin'
      ? [r.action, r.target].filter(Boolean).join(' ')
      : [r.method, r.route].filter(Boolean).join(' ');
    const key = r.key_name || r.key_id
      ? [h('span', { class: 'audit-keyname' }, r.key_name || ''), r.key_id ? h('span', { class: 'muted mono audit-keyid' }, r.key_id) : null]
      : h('span', { class: 'muted' }, '–');
    const tokens = r.tokens_in === undefined && r.tokens_out === undefined ? '–'
      : `${fmtNumber(r.tokens_in ?? 0)} / ${fmtNumber(r.tokens_out ?? 0)}`;
    const summary = h('tr', { class: 'audit-row', dataset: { seq: String(r.seq), kind: r.kind || '' } },
      h('td', { class: 'audit-time' }, toggle, h('time', { datetime: new Date(r.time_ms).toISOString() }, fmtDateTime(r.time_ms))),
      h('td', null, h('span', { class: `badge kind-${r.kind}` }, KINDS.includes(r.kind) ? t(`audit.kind.${r.kind}`) : r.kind)),
      h('td', { class: 'audit-key' }, key),
      h('td', { class: 'audit-what mono' }, what || '–'),
      h('td', { class: 'audit-model' }, r.model || '–'),
      h('td', null, statusBadge(r.status)),
      h('td', { class: 'num' }, tokens),
      h('td', { class: 'num' }, r.ms === undefined ? '–' : fmtNumber(r.ms)));
    return [summary, detail];
  }

  /** Every field of a record, in the daemon's order: lists joined, objects as JSON. */
  fields(r) {
    const value = (k, v) => {
      if (k === 'time_ms') return `${fmtDateTime(v)} (${v})`;
      if (Array.isArray(v)) return v.length ? v.map((x) => h('span', { class: 'badge' }, String(x))) : '–';
      if (v && typeof v === 'object') return h('pre', { class: 'audit-json' }, JSON.stringify(v, null, 2));
      return String(v);
    };
    return h('dl', { class: 'audit-fields' },
      Object.entries(r).flatMap(([k, v]) => [
        h('dt', { class: 'mono' }, k),
        h('dd', { class: ['hash', 'prev', 'request_id'].includes(k) ? 'mono' : null, dataset: { field: k } }, value(k, v)),
      ]));
  }
}

/** The status with colour: 2xx good, 4xx warning, 5xx failure. */
function statusBadge(status) {
  if (status === undefined || status === null) return h('span', { class: 'muted' }, '–');
  const cls = status >= 500 ? 'bad' : status >= 400 ? 'warn' : 'good';
  return h('span', { class: `badge status ${cls}`, dataset: { status: String(status) } }, String(status));
}
