// Models (keys with the `admin` scope): the chat models this daemon knows (GET
// /v1/admin/models) with their state, provider, context length and what each is charged
// against the memory budget; load one by name or directory (POST /v1/admin/models), unload
// (DELETE, after a confirmation) and pin or unpin (PATCH). The daemon's refusals (over the
// budget, pinned) are shown as it words them.

import { h, put, nextId, confirmDialog, toast } from './dom.js';
import { t, fmtNumber } from './i18n.js';
import { api } from './api.js';

const MIB = 1 << 20;
const mib = (b) => fmtNumber(Math.ceil(b / MIB));

export class ModelsView {
  constructor() {
    this.build();
  }

  build() {
    const modelId = nextId('mload');
    const pinId = nextId('mpin');
    this.loadInput = h('input', { id: modelId, name: 'model', required: true, autocomplete: 'off', placeholder: t('models.load.hint') });
    this.loadPin = h('input', { id: pinId, type: 'checkbox', name: 'pin' });
    this.loadButton = h('button', { type: 'submit', class: 'primary' }, t('models.load'));
    this.msg = h('p', { class: 'formmsg', role: 'alert' });
    const form = h('form', { class: 'row models-load' },
      h('div', { class: 'field grow' }, h('label', { for: modelId }, t('models.load.model')), this.loadInput),
      h('div', { class: 'field end' }, h('span', { class: 'check' }, this.loadPin, h('label', { for: pinId }, t('models.pin')))),
      h('div', { class: 'field end' }, this.loadButton));
    form.addEventListener('submit', (e) => { e.preventDefault(); this.load(this.loadInput.value.trim(), this.loadPin.checked); });
    this.budget = h('p', { class: 'models-budget' });
    this.table = h('div', { class: 'table-wrap' });
    this.el = h('div', { class: 'models' },
      h('section', { 'aria-labelledby': 'models-h' },
        h('h2', { id: 'models-h' }, t('models.title')),
        h('p', { class: 'lead' }, t('models.lead')),
        this.budget, this.table),
      h('section', { 'aria-labelledby': 'models-load-h' },
        h('h3', { id: 'models-load-h' }, t('models.load.title')), form, this.msg));
  }

  show() {
    this.refresh();
  }

  async refresh() {
    let list;
    try {
      list = await api('GET', '/v1/admin/models');
    } catch (e) {
      this.msg.textContent = e.message;
      return;
    }
    this.render(list);
  }

  render(list) {
    const used = list.memory_used_bytes;
    const budget = list.memory_budget_bytes;
    put(this.budget, budget
      ? [h('meter', { min: 0, max: budget, value: Math.min(used, budget), 'aria-label': t('models.budget.label') }),
        ' ', t('models.budget', { used: mib(used), budget: mib(budget) })]
      : t('models.budget.none', { used: mib(used) }));
    const head = h('thead', null, h('tr', null,
      [t('models.col.model'), t('models.col.state'), t('models.col.provider'), t('models.col.context'),
        t('models.col.memory'), t('models.col.running'), t('models.col.actions')]
        .map((c) => h('th', { scope: 'col' }, c))));
    const row = (m) => {
      const unload = h('button', { type: 'button', class: 'danger', disabled: m.state !== 'ready' }, t('models.unload'));
      unload.addEventListener('click', () => this.unload(m.id));
      const load = h('button', { type: 'button', disabled: !['unloaded', 'failed'].includes(m.state) }, t('models.load'));
      load.addEventListener('click', () => this.load(m.id, false));
      const pin = h('button', { type: 'button', 'aria-pressed': String(m.pinned) }, m.pinned ? t('models.unpin') : t('models.pin'));
      pin.addEventListener('click', () => this.pin(m.id, !m.pinned));
      return h('tr', { class: 'model-row', dataset: { model: m.id, state: m.state } },
        h('th', { scope: 'row' }, h('span', { class: 'model-id' }, m.id),
          m.default ? h('span', { class: 'badge' }, t('models.default')) : null,
          m.pinned ? h('span', { class: 'badge pinned' }, t('models.pinned')) : null,
          h('span', { class: 'model-dir muted' }, m.dir)),
        h('td', null, h('span', { class: `badge state-${m.state}` }, t(`models.state.${m.state}`)),
          m.error ? h('span', { class: 'model-error' }, m.error) : null),
        h('td', null, m.provider ?? '—'),
        h('td', { class: 'num' }, m.context_length ? fmtNumber(m.context_length) : '—'),
        h('td', { class: 'num' }, m.memory_bytes ? `${mib(m.memory_bytes)} MiB` : '—'),
        h('td', { class: 'num' }, m.active === undefined ? '—' : `${m.active} / ${m.queued}`),
        h('td', { class: 'actions' }, load, unload, pin));
    };
    put(this.table, h('table', { class: 'list models-table' }, head, h('tbody', null, list.data.map(row))));
  }

  /** Run one change, then show the list again; the daemon's refusal goes to the message line. */
  async change(busy, method, path, body) {
    this.msg.textContent = busy;
    this.msg.classList.remove('error');
    this.el.setAttribute('aria-busy', 'true');
    try {
      const m = await api(method, path, body);
      this.msg.textContent = '';
      toast(t('models.done', { model: m.id, state: t(`models.state.${m.state}`) }));
    } catch (e) {
      this.msg.textContent = e.message;
      this.msg.classList.add('error');
    } finally {
      this.el.removeAttribute('aria-busy');
      await this.refresh();
    }
  }

  load(model, pin) {
    if (!model) {
      this.msg.textContent = t('models.load.empty');
      this.msg.classList.add('error');
      return Promise.resolve();
    }
    return this.change(t('models.loading', { model }), 'POST', '/v1/admin/models', { model, pin });
  }

  async unload(model) {
    const ok = await confirmDialog(t('models.unload.confirm', { model }), { ok: t('models.unload'), cancel: t('cancel') });
    if (!ok) return;
    await this.change(t('models.unloading', { model }), 'DELETE', `/v1/admin/models/${encodeURIComponent(model)}`);
  }

  pin(model, pinned) {
    return this.change('', 'PATCH', `/v1/admin/models/${encodeURIComponent(model)}`, { pinned });
  }
}
