// Admin (keys with the `admin` scope): daemon status, a live tokens/s chart, API keys.
// (Agents have their own page, agents.js.)

import { h, put, copyText, confirmDialog, toast, nextId } from './dom.js';
import { t, fmtDate, fmtNumber, fmtDuration } from './i18n.js';
import { api } from './api.js';
import { drawChart } from './chart.js';

const POLL_MS = 5000;
const FIXED_SCOPES = ['chat', 'embeddings', 'web', 'admin'];

export class AdminView {
  constructor() {
    this.timer = null;
    this.samples = [];
    this.build();
  }

  build() {
    this.cards = h('dl', { class: 'cards' });
    this.tls = h('dl', { class: 'tls' });
    this.canvas = h('canvas', { class: 'chart', role: 'img', 'aria-label': t('admin.chart') });
    this.resize = new ResizeObserver(() => this.draw());
    this.resize.observe(this.canvas);

    const nameId = nextId('kname');
    const kbId = nextId('kkb');
    const rpmId = nextId('krpm');
    const tpmId = nextId('ktpm');
    const groupId = nextId('kgroup');
    const dayId = nextId('kday');
    const monthId = nextId('kmonth');
    this.kName = h('input', { id: nameId, name: 'name', required: true, maxlength: 64, autocomplete: 'off' });
    this.kScopes = FIXED_SCOPES.map((s) => h('input', { type: 'checkbox', value: s, checked: s === 'chat', id: nextId('ks') }));
    this.kKb = h('input', { id: kbId, name: 'kb_scopes', placeholder: t('admin.key.kb.hint'), autocomplete: 'off' });
    this.kRpm = h('input', { id: rpmId, type: 'number', min: 1, step: 1, name: 'rpm', placeholder: t('admin.unlimited'), class: 'narrow' });
    this.kTpm = h('input', { id: tpmId, type: 'number', min: 1, step: 1, name: 'tpm', placeholder: t('admin.unlimited'), class: 'narrow' });
    this.kGroup = h('input', { id: groupId, name: 'group', placeholder: t('admin.key.group.hint'), autocomplete: 'off', class: 'narrow' });
    this.kDay = h('input', { id: dayId, type: 'number', min: 1, step: 1, name: 'tokens_per_day', placeholder: t('admin.unlimited'), class: 'narrow' });
    this.kMonth = h('input', { id: monthId, type: 'number', min: 1, step: 1, name: 'tokens_per_month', placeholder: t('admin.unlimited'), class: 'narrow' });
    this.kMsg = h('p', { class: 'formmsg', role: 'alert' });
    const form = h('form', { class: 'key-form' },
      h('div', { class: 'field' }, h('label', { for: nameId }, t('admin.key.name')), this.kName),
      h('fieldset', { class: 'field' }, h('legend', null, t('admin.key.scopes')),
        h('div', { class: 'row' }, this.kScopes.map((b) => h('span', { class: 'check' }, b, h('label', { for: b.id }, b.value))))),
      h('div', { class: 'field grow' }, h('label', { for: kbId }, t('admin.key.kb')), this.kKb),
      h('div', { class: 'field' }, h('label', { for: rpmId }, t('admin.key.rpm')), this.kRpm),
      h('div', { class: 'field' }, h('label', { for: tpmId }, t('admin.key.tpm')), this.kTpm),
      h('div', { class: 'field' }, h('label', { for: groupId }, t('admin.key.group')), this.kGroup),
      h('div', { class: 'field' }, h('label', { for: dayId }, t('admin.key.day')), this.kDay),
      h('div', { class: 'field' }, h('label', { for: monthId }, t('admin.key.month')), this.kMonth),
      h('div', { class: 'field end' }, h('button', { type: 'submit', class: 'primary' }, t('admin.key.create'))),
      this.kMsg);
    form.addEventListener('submit', (e) => { e.preventDefault(); this.createKey(); });
    this.secret = h('div', { class: 'secret card', hidden: true, role: 'region', 'aria-live': 'polite' });
    this.keys = h('div', { class: 'keys' });

    this.el = h('div', { class: 'admin' },
      h('section', { 'aria-labelledby': 'admin-status' },
        h('h2', { id: 'admin-status' }, t('admin.status')), this.cards),
      h('section', { class: 'card', 'aria-labelledby': 'admin-tls' },
        h('h3', { id: 'admin-tls' }, t('admin.tls')), this.tls),
      h('figure', { class: 'card chart-card' },
        h('figcaption', null, t('admin.chart')), this.canvas),
      h('section', { 'aria-labelledby': 'admin-keys' },
        h('h2', { id: 'admin-keys' }, t('admin.keys')), form, this.secret, this.keys));
  }

  show() {
    this.poll();
    this.loadKeys();
  }

  hide() {
    clearTimeout(this.timer);
    this.timer = null;
  }

  destroy() {
    this.hide();
    this.resize.disconnect();
  }

  async poll() {
    clearTimeout(this.timer);
    try {
      const [status, hist] = await Promise.all([api('GET', '/v1/admin/status'), api('GET', '/v1/admin/metrics/history')]);
      this.renderStatus(status);
      this.samples = hist.data || [];
      this.windowS = (hist.capacity || 180) * (hist.interval_s || 5);
      this.draw();
    } catch (e) {
      if (e.status === 401) return;
      toast(e.friendly);
    }
    if (this.el.isConnected) this.timer = setTimeout(() => this.poll(), POLL_MS);
  }

  draw() {
    if (!this.canvas.isConnected) return;
    drawChart(this.canvas, this.samples, {
      windowS: this.windowS || 900,
      labels: { now: t('admin.chart.now'), empty: t('admin.chart.empty'), minutes: (n) => t('admin.chart.min', { n }) },
    });
  }

  renderStatus(s) {
    const card = (label, value, cls) => h('div', { class: `stat ${cls || ''}` }, h('dt', null, label), h('dd', null, value ?? '–'));
    const ready = s.ready ? t('admin.ready') : t('admin.loading');
    put(this.cards,
      card(t('admin.model'), s.model, 'wide'),
      card(t('admin.provider'), s.provider),
      card(t('admin.state'), ready, s.ready ? 'good' : 'warn'),
      card(t('admin.queue'), fmtNumber(s.queue_depth)),
      card(t('admin.active'), fmtNumber(s.active_sequences)),
      card(t('admin.tps', { s: s.sample_interval_s || 5 }), fmtNumber(s.recent_tokens_per_s, 1)),
      card(t('admin.tpsavg'), fmtNumber(s.tokens_per_s, 1)),
      card(t('admin.cancel'), fmtNumber(s.cancellations)),
      card(t('admin.uptime'), fmtDuration(s.uptime_s)),
      card(t('admin.version'), s.version));
    const tls = s.tls || {};
    const until = tls.not_after ? Date.parse(tls.not_after) : NaN;
    const days = Number.isFinite(until) ? Math.floor((until - Date.now()) / 86400000) : null;
    put(this.tls,
      h('dt', null, t('admin.fingerprint')), h('dd', { class: 'mono fingerprint' }, tls.fingerprint_sha256 || '–'),
      h('dt', null, t('admin.notafter')), h('dd', null,
        Number.isFinite(until) ? fmtDate(until / 1000) : '–',
        days !== null ? h('span', { class: days < 30 ? 'badge warn' : 'badge' }, t('admin.daysleft', { n: days })) : null),
      h('dt', null, t('admin.source')), h('dd', null, tls.source || '–'));
  }

  async loadKeys() {
    let list;
    try {
      list = (await api('GET', '/v1/admin/keys')).data || [];
    } catch (e) {
      if (e.status !== 401) put(this.keys, h('p', { class: 'error' }, e.friendly));
      return;
    }
    const head = ['admin.key.id', 'admin.key.name', 'admin.key.scopes', 'admin.key.created', 'admin.key.lastused', 'admin.key.limits', 'admin.key.state', 'kb.col.actions']
      .map((k) => h('th', { scope: 'col' }, t(k)));
    const limits = (k) => [k.rpm ? `${fmtNumber(k.rpm)} rpm` : null, k.tpm ? `${fmtNumber(k.tpm)} tpm` : null,
      k.tokens_per_day ? t('admin.key.perday', { n: fmtNumber(k.tokens_per_day) }) : null,
      k.tokens_per_month ? t('admin.key.permonth', { n: fmtNumber(k.tokens_per_month) }) : null,
      k.group ? t('admin.key.ingroup', { g: k.group }) : null].filter(Boolean).join(', ') || t('admin.unlimited');
    const rows = list.slice().reverse().map((k) => h('tr', { class: k.revoked ? 'revoked' : null },
      h('td', { class: 'mono' }, k.id),
      h('th', { scope: 'row' }, k.name),
      h('td', null, (k.scopes || []).map((s) => h('span', { class: 'badge' }, s))),
      h('td', null, fmtDate(k.created)),
      h('td', null, k.last_used ? fmtDate(k.last_used) : t('admin.never')),
      h('td', null, limits(k)),
      h('td', null, h('span', { class: k.revoked ? 'badge warn' : 'badge good' }, k.revoked ? t('admin.key.revoked') : t('admin.key.active'))),
      h('td', null, k.revoked ? null : h('button', {
        type: 'button', class: 'small ghost danger-text', 'aria-label': t('admin.key.revoke.label', { name: k.name }),
        onclick: () => this.revoke(k),
      }, t('admin.key.revoke')))));
    put(this.keys, h('div', { class: 'table-wrap' }, h('table', null, h('thead', null, h('tr', null, head)), h('tbody', null, rows))));
  }

  async createKey() {
    this.kMsg.className = 'formmsg';
    put(this.kMsg);
    const scopes = this.kScopes.filter((b) => b.checked).map((b) => b.value)
      .concat(this.kKb.value.split(/[\s,]+/).filter(Boolean));
    if (!scopes.length) { put(this.kMsg, t('admin.key.noscope')); this.kMsg.classList.add('error'); return; }
    const num = (el) => (el.value === '' ? null : Number(el.value));
    const name = this.kName.value.trim();
    try {
      const group = this.kGroup.value.trim() || null;
      const k = await api('POST', '/v1/admin/keys', {
        name, scopes, rpm: num(this.kRpm), tpm: num(this.kTpm), group,
        tokens_per_day: num(this.kDay), tokens_per_month: num(this.kMonth),
      });
      for (const el of [this.kName, this.kKb, this.kRpm, this.kTpm, this.kGroup, this.kDay, this.kMonth]) el.value = '';
      this.showSecret(k);
      this.loadKeys();
    } catch (e) {
      put(this.kMsg, e.friendly);
      this.kMsg.classList.add('error');
    }
  }

  showSecret(k) {
    const code = h('code', { class: 'mono secret-value' }, k.secret);
    const copy = h('button', { type: 'button', class: 'primary', onclick: async () => { if (await copyText(k.secret)) toast(t('chat.copied')); } }, t('chat.copy'));
    const done = h('button', { type: 'button', onclick: () => { put(this.secret); this.secret.hidden = true; } }, t('admin.key.done'));
    put(this.secret,
      h('h3', null, t('admin.key.secret.label', { name: k.name })),
      h('p', { class: 'warn-text' }, t('admin.key.secret')),
      h('div', { class: 'row' }, code, copy, done));
    this.secret.hidden = false;
    copy.focus();
  }

  async revoke(k) {
    if (!(await confirmDialog(t('admin.key.revoke.confirm', { name: k.name }), { ok: t('admin.key.revoke'), cancel: t('cancel') }))) return;
    try {
      await api('DELETE', `/v1/admin/keys/${encodeURIComponent(k.id)}`);
      toast(t('admin.key.revoked.toast', { name: k.name }));
      await this.loadKeys();
    } catch (e) {
      if (e.status !== 401) toast(e.friendly);
    }
  }
}
