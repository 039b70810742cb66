// Usage (keys with the `admin` scope): tokens per department (usage group) as bars, each
// group's and key's quota as a meter, and the per-key table, over a range of UTC days
// (GET /v1/admin/usage). Every name in the report is shown as text.

import { h, put, nextId } from './dom.js';
import { t, fmtNumber } from './i18n.js';
import { api } from './api.js';

/** `YYYY-MM-DD` of a Date, in UTC (the report's days are UTC days). */
function utcDate(d) {
  return d.toISOString().slice(0, 10);
}

const RANGES = {
  month: () => {
    const now = new Date();
    return [utcDate(new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1))), utcDate(now)];
  },
  week: () => [utcDate(new Date(Date.now() - 6 * 86400e3)), utcDate(new Date())],
  today: () => [utcDate(new Date()), utcDate(new Date())],
};

/** A quota meter: used / limit with a bar, or the plain number without a quota. */
function meter(used, limit) {
  if (!limit) return h('span', { class: 'num' }, fmtNumber(used));
  const share = Math.min(1, used / limit);
  return h('span', { class: `quota${share >= 1 ? ' over' : share >= 0.8 ? ' near' : ''}` },
    h('meter', { min: 0, max: limit, value: Math.min(used, limit), low: limit * 0.8, high: limit * 0.99, optimum: 0,
      'aria-label': t('usage.quota', { used: fmtNumber(used), limit: fmtNumber(limit) }) }),
    h('span', { class: 'num' }, `${fmtNumber(used)} / ${fmtNumber(limit)}`));
}

export class UsageView {
  constructor() {
    this.build();
  }

  build() {
    const rangeId = nextId('urange');
    const fromId = nextId('ufrom');
    const toId = nextId('uto');
    this.range = h('select', { id: rangeId, onchange: () => this.pick() },
      ['month', 'week', 'today', 'custom'].map((r) => h('option', { value: r }, t(`usage.range.${r}`))));
    this.from = h('input', { id: fromId, type: 'date', onchange: () => this.load() });
    this.to = h('input', { id: toId, type: 'date', onchange: () => this.load() });
    this.msg = h('p', { class: 'formmsg', role: 'alert' });
    this.bars = h('div', { class: 'bars', role: 'list', 'aria-label': t('usage.chart') });
    this.groups = h('div', { class: 'table-wrap' });
    this.keys = h('div', { class: 'table-wrap' });
    this.el = h('div', { class: 'usage' },
      h('section', { 'aria-labelledby': 'usage-h' },
        h('h2', { id: 'usage-h' }, t('usage.title')),
        h('div', { class: 'row filters' },
          h('div', { class: 'field' }, h('label', { for: rangeId }, t('usage.range')), this.range),
          h('div', { class: 'field' }, h('label', { for: fromId }, t('usage.from')), this.from),
          h('div', { class: 'field' }, h('label', { for: toId }, t('usage.to')), this.to),
          h('div', { class: 'field end' }, h('button', { type: 'button', onclick: () => this.load() }, t('usage.refresh')))),
        this.msg),
      h('figure', { class: 'card' }, h('figcaption', null, t('usage.chart')), this.bars),
      h('section', { 'aria-labelledby': 'usage-groups' }, h('h3', { id: 'usage-groups' }, t('usage.groups')), this.groups),
      h('section', { 'aria-labelledby': 'usage-keys' }, h('h3', { id: 'usage-keys' }, t('usage.keys')), this.keys));
    this.pick();
  }

  show() {
    this.load();
  }

  pick() {
    const r = this.range.value;
    const custom = r === 'custom';
    this.from.disabled = !custom;
    this.to.disabled = !custom;
    if (!custom) [this.from.value, this.to.value] = RANGES[r]();
  }

  async load() {
    const q = new URLSearchParams({ from: this.from.value, to: this.to.value });
    let u;
    try {
      u = await api('GET', `/v1/admin/usage?${q}`);
    } catch (e) {
      this.msg.textContent = e.message;
      return;
    }
    this.msg.textContent = '';
    this.render(u);
  }

  render(u) {
    const groupName = (g) => g ?? t('usage.nogroup');
    const total = (x) => x.tokens_in + x.tokens_out;
    const groups = [...u.groups].sort((a, b) => total(b) - total(a));
    const max = Math.max(1, ...groups.map(total));
    const bar = (g) => {
      // Widths through the CSSOM: the console's CSP allows no inline style attributes.
      const fill = h('span', { class: 'bar-fill' });
      fill.style.width = `${(100 * total(g)) / max}%`;
      return h('div', { class: 'bar', role: 'listitem', dataset: { group: g.group ?? '' } },
        h('span', { class: 'bar-label' }, groupName(g.group)),
        h('span', { class: 'bar-track' }, fill),
        h('span', { class: 'num' }, fmtNumber(total(g))));
    };
    put(this.bars, groups.length ? groups.map(bar) : h('p', { class: 'muted' }, t('usage.empty')));
    const head = (first) => h('thead', null, h('tr', null,
      [first, t('usage.requests'), t('usage.in'), t('usage.out'), t('usage.today'), t('usage.month')]
        .map((c) => h('th', { scope: 'col' }, c))));
    const row = (first, x) => h('tr', null,
      h('th', { scope: 'row' }, first),
      h('td', { class: 'num' }, fmtNumber(x.requests)),
      h('td', { class: 'num' }, fmtNumber(x.tokens_in)),
      h('td', { class: 'num' }, fmtNumber(x.tokens_out)),
      h('td', null, meter(x.used_today, x.tokens_per_day)),
      h('td', null, meter(x.used_this_month, x.tokens_per_month)));
    put(this.groups, h('table', { class: 'list usage-groups' }, head(t('usage.group')),
      h('tbody', null, groups.map((g) => row(groupName(g.group), g)))));
    const keys = [...u.keys].sort((a, b) => total(b) - total(a));
    put(this.keys, h('table', { class: 'list usage-keys' }, head(t('usage.key')),
      h('tbody', null, keys.map((k) => row(
        h('span', null, k.key_name ?? k.key_id, k.group ? h('span', { class: 'muted' }, ` · ${k.group}`) : null), k)))));
  }
}
