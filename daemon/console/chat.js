// Chat: conversations (IndexedDB), model picker, streamed answers with a thinking panel,
// stop / regenerate / copy, knowledge collections with numbered sources, and tool calls: the
// user's own `tools` (Settings), each call the model makes shown as a collapsible step where the
// user types its result, which goes back as a `role: "tool"` message.
//
// Agents (`agent:NAME` entries of /v1/models) are picked like models; the daemon runs their
// tools itself and streams each one as an `agent_step` chunk, shown as a step of the same kind
// (updated in place when the step's finished event comes). Web search (`web_search: true`) is a
// toggle on ordinary chats; its sources are links. The same view, with `{ agent }`, is the
// Agents page's test chat: one agent, nothing kept.

import { h, put, copyText, confirmDialog, toast, nextId } from './dom.js';
import { t } from './i18n.js';
import { api, streamChat, ApiError } from './api.js';
import * as store from './store.js';
import { renderMarkdown } from './markdown.js';

// Preferences are kept per key (the owner tag, a hash of it): another key signing in on this
// browser starts from its own, never from collections or a model it may not use.
const SETTINGS = 'edgeseek.chat.settings';
const KB_DEFAULT = 'edgeseek.chat.knowledge';
const WEB_DEFAULT = 'edgeseek.chat.web';
const MODEL_DEFAULT = 'edgeseek.chat.model';
const AGENT_PREFIX = 'agent:';

/** Whether a model id names an agent (the daemon runs its tools; client tools are refused). */
export const isAgent = (model) => typeof model === 'string' && model.startsWith(AGENT_PREFIX);

/** An http(s) URL for a link, or null: server text never becomes a `javascript:` or other href. */
export function safeUrl(text) {
  try {
    const u = new URL(String(text));
    return u.protocol === 'http:' || u.protocol === 'https:' ? u.href : null;
  } catch { return null; }
}

/**
 * Merge citations into `list` by their `index` (the number the model saw): the first chunk of a
 * web or knowledge answer carries some, an agent's finished steps the ones they found.
 */
export function addCitations(list, more) {
  for (const c of more || []) {
    if (!c || typeof c !== 'object' || !Number.isFinite(Number(c.index))) continue;
    const at = list.findIndex((x) => Number(x.index) === Number(c.index));
    if (at < 0) list.push(c); else list[at] = c;
  }
  list.sort((a, b) => Number(a.index) - Number(b.index));
  return list;
}

/**
 * Keep an `agent_step` event: a step is found by its `call` id, so the finished event replaces
 * the running one in place; a new call is appended.
 */
export function addStep(steps, step) {
  if (!step || typeof step !== 'object') return steps;
  const at = steps.findIndex((x) => x.call && x.call === step.call);
  if (at < 0) steps.push(step); else steps[at] = { ...steps[at], ...step };
  return steps;
}

function loadSettings(key) {
  const d = { system: '', temperature: '', maxTokens: '', budget: '', tools: '', stream: true };
  try { return { ...d, ...JSON.parse(localStorage.getItem(key) || '{}') }; } catch { return d; }
}

function num(v) {
  if (v === '' || v === null || v === undefined) return undefined;
  const n = Number(v);
  return Number.isFinite(n) ? n : undefined;
}

/**
 * The Tools setting checked before anything is sent: `{}` when empty, `{ tools }` for an OpenAI
 * `tools` array, `{ error }` saying what is wrong. The daemon checks the rest (and answers a
 * model whose template has no tools with a 400 that the message then shows).
 */
export function parseTools(text) {
  if (!text || !text.trim()) return {};
  let v;
  try { v = JSON.parse(text); } catch (e) { return { error: t('chat.tools.json', { why: e.message }) }; }
  if (!Array.isArray(v) || !v.length) return { error: t('chat.tools.array') };
  for (const [i, tool] of v.entries()) {
    const f = tool && typeof tool === 'object' ? tool.function : null;
    if (!f || tool.type !== 'function' || typeof f !== 'object' || typeof f.name !== 'string' || !f.name.trim()) {
      return { error: t('chat.tools.item', { i }) };
    }
    const p = f.parameters;
    if (p !== undefined && (!p || typeof p !== 'object' || Array.isArray(p))) return { error: t('chat.tools.params', { i }) };
  }
  return { tools: v };
}

/**
 * Fold streamed `delta.tool_calls` pieces into whole calls as the OpenAI SDKs do: a call is
 * found by its `index`; `id`, `type` and `function.name` are taken when a piece has them (the
 * first one does), `function.arguments` pieces are appended in order.
 */
export function addToolDeltas(calls, deltas) {
  for (const d of deltas) {
    if (!d || !Number.isInteger(d.index) || d.index < 0) continue;
    calls[d.index] ??= { id: '', type: 'function', function: { name: '', arguments: '' } };
    const c = calls[d.index];
    if (d.id) c.id = d.id;
    if (d.type) c.type = d.type;
    if (d.function?.name) c.function.name = d.function.name;
    if (d.function?.arguments) c.function.arguments += d.function.arguments;
  }
  return calls;
}

/** A call's arguments for reading: pretty-printed JSON, or the text as sent when it is not JSON. */
function prettyArgs(text) {
  try { return { text: JSON.stringify(JSON.parse(text), null, 2), json: true }; } catch { return { text: text || '', json: false }; }
}

/**
 * The frame shared by both kinds of step (a call the user answers, a tool an agent ran): a
 * collapsible box whose summary line holds the kind, the tool's name and a state badge, and
 * whose body starts with the arguments. The caller appends the rest of the body.
 */
function stepFrame(kind, cls, open) {
  const s = {
    kind: h('span', { class: 'tool-kind' }, kind),
    name: h('span', { class: 'tool-name mono' }),
    badge: h('span', { class: 'badge' }),
    args: h('pre', { class: 'tool-args' }),
  };
  s.body = h('div', { class: 'tool-body' }, h('p', { class: 'tool-label' }, t('chat.tool.args')), s.args);
  s.el = h('details', { class: cls, open }, h('summary', null, s.kind, s.name, s.badge), s.body);
  return s;
}

const STEP_BADGE = { running: '', ok: ' good', error: ' bad', timeout: ' bad', refused: ' warn' };

/** The calls of an assistant message (a streamed list may have holes until every index came). */
const callsOf = (m) => (m.tool_calls || []).filter(Boolean);

/** tool_call_id → its `role: "tool"` message, over a whole conversation. */
function toolResults(c) {
  const out = new Map();
  for (const m of c.messages) if (m.role === 'tool') out.set(m.tool_call_id, m);
  return out;
}

function titleOf(text) {
  const line = text.replace(/\s+/g, ' ').trim();
  return line.length > 48 ? `${line.slice(0, 47)}…` : line || t('chat.untitled');
}

export class ChatView {
  /**
   * `opts.admin`: the key may read /v1/admin/tools (which says whether web search is
   * configured). `opts.agent`: the test chat of that agent (Agents page): no conversation list,
   * model or settings, and nothing kept in IndexedDB.
   */
  constructor(owner, opts = {}) {
    this.owner = owner;
    this.admin = !!opts.admin;
    // What the key may do (GET /v1/me); null from a daemon without it: everything is offered.
    this.me = opts.me || null;
    this.fixed = opts.agent ? `${AGENT_PREFIX}${opts.agent}` : null;
    this.models = [];
    // Web search: null (may be tried), or why it cannot be used ('unconfigured', 'denied').
    this.webOff = this.me && !this.me.can.web_search ? 'denied' : null;
    this.conv = null;
    this.busy = null; // { controller, msg, conv }
    this.refs = new WeakMap(); // message → its elements
    // Agent steps the user opened (by call id): a conversation drawn again keeps them open.
    this.openSteps = new Set();
    this.settings = this.fixed ? { stream: true } : loadSettings(this.pref(SETTINGS));
    this.collections = null; // null: not asked yet; array; or an ApiError
    this.modelTimer = null;
    this.build();
    this.ready = this.init();
  }

  build() {
    const modelId = nextId('model');
    const msgId = nextId('msg');
    this.list = h('ul', { class: 'conv-list' });
    this.convs = h('aside', { class: 'convs', id: nextId('convs'), 'aria-label': t('chat.conversations') },
      h('div', { class: 'convs-head' },
        h('h2', null, t('chat.conversations')),
        h('button', { type: 'button', class: 'primary small', onclick: () => this.newChat() }, `+ ${t('chat.new')}`)),
      this.list);
    this.modelSel = h('select', {
      id: modelId,
      onchange: () => {
        if (this.conv) this.conv.model = this.modelSel.value;
        if (!this.fixed) localStorage.setItem(this.pref(MODEL_DEFAULT), this.modelSel.value);
        this.updateMode();
      },
    });
    this.convToggle = h('button', {
      type: 'button', class: 'ghost convs-toggle', 'aria-controls': this.convs.id, 'aria-expanded': 'false',
      'aria-label': t('chat.conversations.toggle'),
      onclick: () => this.toggleConvs(),
    }, '☰');

    // Knowledge popover.
    this.kbPanel = h('div', { class: 'popover', id: nextId('kb'), hidden: true, role: 'group', 'aria-label': t('kb.choose') });
    this.kbBtn = h('button', {
      type: 'button', 'aria-expanded': 'false', 'aria-controls': this.kbPanel.id,
      'aria-pressed': 'false', onclick: () => this.togglePopover(this.kbPanel, this.kbBtn, () => this.fillKb()),
    }, t('kb.toggle'));

    // Web search: sends `web_search: true`; its reason shows when it cannot be used.
    this.webWhy = h('span', { class: 'sr-only', id: nextId('web-why') });
    this.webBtn = h('button', {
      type: 'button', class: 'web-toggle', 'aria-pressed': 'false', 'aria-describedby': this.webWhy.id,
      onclick: () => this.toggleWeb(),
    }, t('chat.web'));
    this.agentNote = h('p', { class: 'agent-note', hidden: true, 'aria-live': 'polite' });

    // Settings popover.
    const field = (label, input) => { const id = nextId('set'); input.id = id; return h('div', { class: 'field' }, h('label', { for: id }, label), input); };
    const setting = (k, props) => {
      const el = h(props.tag || 'input', { ...props, tag: undefined, value: this.settings[k] });
      el.addEventListener('input', () => { this.settings[k] = el.value; localStorage.setItem(this.pref(SETTINGS), JSON.stringify(this.settings)); });
      return el;
    };
    this.setPanel = h('div', { class: 'popover settings', id: nextId('settings'), hidden: true },
      field(t('chat.system'), setting('system', { tag: 'textarea', rows: 3, name: 'system' })),
      field(t('chat.temperature'), setting('temperature', { type: 'number', min: 0, max: 2, step: 0.1, placeholder: t('chat.default'), name: 'temperature' })),
      field(t('chat.maxtokens'), setting('maxTokens', { type: 'number', min: 1, step: 1, placeholder: t('chat.default'), name: 'max_tokens' })),
      field(t('chat.budget'), setting('budget', { type: 'number', min: 0, step: 1, placeholder: t('chat.default'), name: 'max_reasoning_tokens' })),
      this.buildStreamSetting(),
      this.buildToolsSetting());
    this.setBtn = h('button', {
      type: 'button', 'aria-expanded': 'false', 'aria-controls': this.setPanel.id,
      onclick: () => this.togglePopover(this.setPanel, this.setBtn),
    }, t('chat.settings'));

    this.msgs = h('div', { class: 'messages', role: 'log', 'aria-label': t('chat.conversations'), tabindex: '0' });
    this.input = h('textarea', { id: msgId, name: 'message', rows: 1, placeholder: t('chat.placeholder'), 'aria-label': t('chat.message') });
    this.sendBtn = h('button', { type: 'submit', class: 'primary send' }, t('chat.send'));
    this.stopBtn = h('button', { type: 'button', class: 'danger stop', hidden: true, onclick: () => this.stop() }, t('chat.stop'));
    const form = h('form', { class: 'composer' }, h('label', { for: msgId, class: 'sr-only' }, t('chat.message')), this.input, this.sendBtn, this.stopBtn);
    form.addEventListener('submit', (e) => { e.preventDefault(); this.send(); });
    this.input.addEventListener('keydown', (e) => {
      // Enter sends, except while an IME is composing (Chinese/Japanese input: Enter picks the
      // candidate; browsers flag it with isComposing or the legacy keyCode 229).
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
        e.preventDefault();
        this.send();
      } else if (e.key === 'Escape' && this.busy) {
        this.stop();
      }
    });
    this.input.addEventListener('input', () => this.grow());

    this.kbWrap = h('div', { class: 'pop-wrap' }, this.kbBtn, this.kbPanel);
    if (this.fixed) {
      // The Agents page's test chat: one agent, a button to start over, nothing else.
      put(this.modelSel, h('option', { value: this.fixed, selected: true }, this.fixed));
      this.el = h('div', { class: 'chat embedded' },
        h('section', { class: 'chat-main', 'aria-label': t('agents.test') },
          h('div', { class: 'toolbar' },
            h('span', { class: 'test-title' }, t('agents.test.with', { name: this.fixed })),
            h('span', { class: 'spacer' }),
            h('button', { type: 'button', class: 'small', onclick: () => this.newChat() }, t('agents.test.clear'))),
          this.msgs, form));
    } else {
      this.el = h('div', { class: 'chat' },
        this.convs,
        h('section', { class: 'chat-main', 'aria-label': t('nav.chat') },
          h('div', { class: 'toolbar' },
            this.convToggle,
            h('label', { for: modelId, class: 'inline' }, t('chat.model')), this.modelSel,
            h('span', { class: 'spacer' }),
            this.webBtn, this.webWhy,
            this.kbWrap,
            h('div', { class: 'pop-wrap' }, this.setBtn, this.setPanel)),
          this.agentNote,
          this.msgs, form));
    }

    this.onDocClick = (e) => {
      for (const [panel, btn] of [[this.kbPanel, this.kbBtn], [this.setPanel, this.setBtn]]) {
        if (!panel.hidden && !panel.contains(e.target) && !btn.contains(e.target)) this.closePopover(panel, btn);
      }
    };
    this.onKey = (e) => {
      if (e.key !== 'Escape') return;
      for (const [panel, btn] of [[this.kbPanel, this.kbBtn], [this.setPanel, this.setBtn]]) {
        if (!panel.hidden) { this.closePopover(panel, btn); btn.focus(); }
      }
    };
  }

  /** "Stream answers": off, the answer comes as one JSON response (`message.tool_calls` whole). */
  buildStreamSetting() {
    const id = nextId('set');
    const box = h('input', { type: 'checkbox', id, name: 'stream', checked: this.settings.stream !== false });
    box.addEventListener('change', () => { this.settings.stream = box.checked; localStorage.setItem(this.pref(SETTINGS), JSON.stringify(this.settings)); });
    return h('div', { class: 'check' }, box, h('label', { for: id }, t('chat.stream')));
  }

  /** "Tools (JSON)": an OpenAI `tools` array sent with every request, checked as it is typed. */
  buildToolsSetting() {
    const id = nextId('set');
    const msgId = nextId('tools-msg');
    this.toolsMsg = h('p', { class: 'formmsg error', id: msgId, role: 'alert' });
    this.toolsInput = h('textarea', {
      id, name: 'tools', rows: 4, class: 'mono tools-json', spellcheck: 'false', 'aria-describedby': msgId,
      placeholder: '[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]',
      value: this.settings.tools || '',
    });
    this.toolsInput.addEventListener('input', () => {
      this.settings.tools = this.toolsInput.value;
      localStorage.setItem(this.pref(SETTINGS), JSON.stringify(this.settings));
      this.checkTools();
    });
    this.checkTools();
    return h('div', { class: 'field' }, h('label', { for: id }, t('chat.tools')), this.toolsInput, this.toolsMsg);
  }

  /** The Tools setting parsed; shows its error next to the field. */
  checkTools() {
    const r = parseTools(this.settings.tools);
    put(this.toolsMsg, r.error || '');
    if (r.error) this.toolsInput.setAttribute('aria-invalid', 'true');
    else this.toolsInput.removeAttribute('aria-invalid');
    return r;
  }

  /** The tools to send, or null (after showing why) when the setting is not a valid array. */
  toolsOrRefuse() {
    const r = this.checkTools();
    if (!r.error) return r;
    if (this.setPanel.hidden) this.togglePopover(this.setPanel, this.setBtn);
    this.toolsInput.focus();
    toast(r.error);
    return null;
  }

  async init() {
    if (this.fixed) { this.newChat(); return; }
    await Promise.all([this.loadModels(), this.checkWeb()]);
    const convs = await store.list(this.owner);
    if (convs.length) await this.open(convs[0].id);
    else this.newChat();
    await this.renderList();
  }

  show() {
    document.addEventListener('click', this.onDocClick);
    document.addEventListener('keydown', this.onKey);
    this.input.focus();
  }

  hide() {
    document.removeEventListener('click', this.onDocClick);
    document.removeEventListener('keydown', this.onKey);
  }

  destroy() {
    this.hide();
    if (this.busy) this.busy.controller.abort();
    clearTimeout(this.modelTimer);
  }

  grow() {
    this.input.style.height = 'auto';
    this.input.style.height = `${Math.min(this.input.scrollHeight, 220)}px`;
  }

  toggleConvs() {
    const open = !this.convs.classList.contains('open');
    this.convs.classList.toggle('open', open);
    this.convToggle.setAttribute('aria-expanded', String(open));
  }

  togglePopover(panel, btn, onOpen) {
    if (panel.hidden) {
      panel.hidden = false;
      btn.setAttribute('aria-expanded', 'true');
      onOpen?.();
      panel.querySelector('input, textarea, select, button')?.focus();
    } else this.closePopover(panel, btn);
  }

  closePopover(panel, btn) {
    panel.hidden = true;
    btn.setAttribute('aria-expanded', 'false');
  }

  // --- models ---------------------------------------------------------------------------

  /** The storage name of preference `name` for this key. */
  pref(name) { return `${name}:${this.owner}`; }

  /**
   * The models and, for keys with agent scopes, the agents (`agent:NAME` with a description):
   * agents go in their own group of the picker, named without the prefix.
   */
  async loadModels() {
    clearTimeout(this.modelTimer);
    let data = [];
    try {
      data = (await api('GET', '/v1/models')).data || [];
    } catch (e) {
      if (e.status === 401) return;
    }
    // Only what chats: agents, and chat models that serve now (loading, unloaded or failed
    // ones are not offered; while none serves the list is asked for again). Embedding models
    // carry no state. A saved choice no longer offered falls back to the default model.
    data = data.filter((m) => isAgent(m.id) || m.state === 'ready');
    this.models = data;
    const saved = this.conv?.model || this.modelSel.value || localStorage.getItem(this.pref(MODEL_DEFAULT));
    const usable = data.filter((m) => !isAgent(m.id));
    let want = saved;
    if (!this.fixed && usable.length && !data.some((m) => m.id === saved)) {
      want = (usable.find((m) => m.default) || usable[0]).id;
      if (saved) toast(t('chat.model.fallback', { from: saved, to: want }));
      localStorage.setItem(this.pref(MODEL_DEFAULT), want);
      if (this.conv) this.conv.model = want;
    }
    const option = (m) => h('option', {
      value: m.id, selected: m.id === want, title: m.description || null,
    }, isAgent(m.id) ? `${m.id.slice(AGENT_PREFIX.length)}${m.description ? ` — ${m.description}` : ''}` : m.id);
    const models = data.filter((m) => !isAgent(m.id));
    const agents = data.filter((m) => isAgent(m.id));
    put(this.modelSel, data.length
      ? [models.map(option), agents.length ? h('optgroup', { label: t('chat.agents') }, agents.map(option)) : null]
      : h('option', { value: '' }, t('chat.nomodel')));
    if (!models.length) this.modelTimer = setTimeout(() => this.loadModels(), 5000);
    this.updateMode();
  }

  /** What the picked model allows: agents bring their own tools and sources. */
  updateMode() {
    const model = this.fixed || this.modelSel.value;
    const agent = isAgent(model);
    this.kbWrap.hidden = agent || (this.me && !this.me.can.knowledge);
    this.webBtn.hidden = agent;
    this.agentNote.hidden = !agent || !!this.fixed;
    if (agent && !this.fixed) {
      const m = this.models.find((x) => x.id === model);
      put(this.agentNote, h('span', { class: 'badge' }, t('chat.agent')), ' ',
        h('strong', null, model.slice(AGENT_PREFIX.length)), m && m.description ? ` — ${m.description}` : '');
    }
    this.updateWebButton();
  }

  // --- web search ---------------------------------------------------------------------------

  /**
   * Admin keys can ask the daemon whether web search is configured (the tools list marks it
   * unavailable). Other keys cannot know before trying: the toggle shows, and a refusal (403
   * scope, 400 not configured) turns it off with the reason.
   */
  async checkWeb() {
    if (!this.admin) return;
    try {
      const r = await api('GET', '/v1/admin/tools');
      const web = (r.data || []).find((x) => x.name === 'web_search');
      if (!web || web.available === false) this.setWebOff('unconfigured', web && web.reason);
    } catch {
      // No tools list (an older daemon): the toggle stays, a refusal explains itself.
    }
  }

  setWebOff(why, detail) {
    this.webOff = why;
    this.webDetail = detail || null;
    if (this.conv) this.conv.web = false;
    this.updateWebButton();
  }

  webReason() {
    if (this.webOff === 'denied') return t('chat.web.denied');
    if (this.webOff === 'unconfigured') return this.webDetail ? `${t('chat.web.unconfigured')} (${this.webDetail})` : t('chat.web.unconfigured');
    return '';
  }

  updateWebButton() {
    const on = !!(this.conv && this.conv.web) && !this.webOff;
    this.webBtn.setAttribute('aria-pressed', on ? 'true' : 'false');
    this.webBtn.classList.toggle('on', on);
    this.webBtn.disabled = !!this.webOff;
    const why = this.webReason();
    put(this.webWhy, why);
    if (why) this.webBtn.title = why; else this.webBtn.removeAttribute('title');
  }

  toggleWeb() {
    if (this.webOff || !this.conv) return;
    this.conv.web = !this.conv.web;
    localStorage.setItem(this.pref(WEB_DEFAULT), this.conv.web ? '1' : '');
    this.updateWebButton();
    if (this.conv.saved) this.save();
  }

  // --- conversations -----------------------------------------------------------------------

  newChat() {
    let kb = [];
    try { kb = JSON.parse(localStorage.getItem(this.pref(KB_DEFAULT)) || '[]'); } catch { kb = []; }
    // Only collections this key may still read (a collection deleted or a scope taken away).
    if (this.me) { const can = new Set(this.me.collections.map((c) => c.name)); kb = kb.filter((n) => can.has(n)); }
    this.conv = {
      id: store.newId(), owner: this.owner, title: t('chat.untitled'), created: Date.now(), updated: Date.now(),
      model: this.fixed || this.modelSel.value, knowledge: this.fixed ? [] : kb, messages: [], saved: false,
      web: !this.fixed && !this.webOff && localStorage.getItem(this.pref(WEB_DEFAULT)) === '1',
    };
    this.renderConv();
    this.renderList();
    this.convs.classList.remove('open');
    this.input.focus();
  }

  async open(id) {
    const c = await store.get(id);
    if (!c) return;
    this.conv = c;
    if ([...this.modelSel.options].some((o) => o.value === c.model)) this.modelSel.value = c.model;
    this.updateMode();
    this.renderConv();
    this.renderList();
    this.convs.classList.remove('open');
  }

  async save(conv = this.conv) {
    conv.updated = Date.now();
    conv.saved = true;
    if (!this.fixed) await store.save(conv);
  }

  async renderList() {
    if (this.fixed) return;
    const convs = await store.list(this.owner);
    const items = convs.map((c) => {
      const current = this.conv && c.id === this.conv.id;
      return h('li', { class: current ? 'current' : null },
        h('button', {
          type: 'button', class: 'conv', 'aria-current': current ? 'true' : null, title: c.title,
          onclick: () => this.open(c.id),
        }, c.title),
        h('button', {
          type: 'button', class: 'ghost icon', 'aria-label': t('chat.delete', { title: c.title }),
          onclick: async () => {
            if (!(await confirmDialog(t('chat.delete.confirm'), { ok: t('delete'), cancel: t('cancel') }))) return;
            await store.remove(c.id);
            if (this.conv && this.conv.id === c.id) this.newChat();
            await this.renderList();
          },
        }, '✕'));
    });
    put(this.list, items);
  }

  renderConv() {
    const c = this.conv;
    this.updateKbButton();
    this.updateWebButton();
    if (!c.messages.length) {
      put(this.msgs, h('div', { class: 'empty' }, h('p', null, t('chat.empty'))));
      return;
    }
    // Tool results show inside the step of the call they answer, not as messages of their own.
    const shown = c.messages.filter((m) => m.role !== 'tool');
    put(this.msgs, shown.map((m, i) => this.renderMessage(m, i === shown.length - 1, c)));
    this.msgs.scrollTop = this.msgs.scrollHeight;
  }

  // --- messages ---------------------------------------------------------------------------

  renderMessage(m, last, conv) {
    if (m.role === 'user') {
      return h('article', { class: 'msg user', 'aria-label': t('chat.you') },
        h('div', { class: 'bubble' }, m.content));
    }
    const summary = h('summary', null, '');
    const thinkBody = h('div', { class: 'thinking-body' });
    const thinking = h('details', { class: 'thinking' }, summary, thinkBody);
    // Opened while the model thinks, closed when the answer starts, unless the user chose.
    summary.addEventListener('click', () => { const r = this.refs.get(m); if (r) r.userToggled = true; });
    const answer = h('div', { class: 'answer md' });
    const sources = h('div', { class: 'sources' });
    const steps = h('div', { class: 'tool-steps' });
    // An agent's steps come before its answer: they ran before it was written.
    const trace = h('div', { class: 'tool-steps agent-steps', role: 'list', 'aria-label': t('chat.steps') });
    const status = h('p', { class: 'status' });
    const actions = h('div', { class: 'actions' });
    const el = h('article', { class: 'msg assistant', 'aria-label': t('chat.assistant') }, thinking, trace, answer, steps, sources, status, actions);
    this.refs.set(m, { el, summary, thinkBody, thinking, answer, steps, stepEls: [], trace, traceEls: new Map(), conv, sources, status, actions });
    this.paint(m, last);
    return el;
  }

  /** Bring a message's elements up to date with its data. */
  paint(m, last) {
    const r = this.refs.get(m);
    if (!r) return;
    const streaming = this.busy && this.busy.msg === m;
    r.el.setAttribute('aria-busy', streaming ? 'true' : 'false');
    r.thinking.hidden = !m.reasoning;
    if (m.reasoning) {
      const thinkingNow = streaming && !m.content;
      put(r.summary, thinkingNow ? t('chat.thinking')
        : m.thinkMs ? t('chat.thought', { s: Math.max(1, Math.round(m.thinkMs / 1000)) }) : t('chat.thought.short'));
      r.summary.classList.toggle('live', thinkingNow);
      put(r.thinkBody, m.reasoning);
      if (!r.userToggled && thinkingNow && !r.autoOpened) { r.thinking.open = true; r.autoOpened = true; }
      if (!r.userToggled && !thinkingNow && r.autoOpened && !r.autoClosed) { r.thinking.open = false; r.autoClosed = true; }
    }
    const opts = {
      citations: m.citations || [],
      onCite: (c) => this.openCitation(c),
      onCopy: (text) => this.copy(text),
      copyLabel: t('chat.copy'),
      sourceLabel: t('kb.sources'),
    };
    put(r.answer, renderMarkdown(m.content || '', opts));
    this.paintTrace(m, r);
    const pending = this.paintSteps(m, r, streaming, last);
    this.paintSources(m, r);
    r.status.className = 'status';
    if (m.error) { put(r.status, m.error); r.status.classList.add('error'); r.status.setAttribute('role', 'alert'); }
    else if (m.stopped) put(r.status, t('chat.stopped'));
    else if (!streaming && m.agentStopped === 'max_steps') put(r.status, t('chat.agent.maxsteps'));
    else if (!streaming && m.finish === 'length') put(r.status, t('chat.length'));
    else if (pending) put(r.status, pending === 1 ? t('chat.tool.asked.1') : t('chat.tool.asked', { n: pending }));
    else if (streaming && !m.content && !m.reasoning && !callsOf(m).length && !(m.steps || []).length) { put(r.status, t('chat.waiting')); r.status.classList.add('live'); }
    else put(r.status);
    if (streaming) put(r.actions);
    else {
      put(r.actions,
        m.content ? h('button', { type: 'button', class: 'small ghost', onclick: () => this.copy(m.content) }, t('chat.copy')) : null,
        last ? h('button', { type: 'button', class: 'small ghost', onclick: () => this.regenerate() }, t('chat.regenerate')) : null);
    }
  }

  /**
   * One collapsible step per tool call: its name, its arguments (pretty JSON, or raw when the
   * text is not JSON), and its result — the `role: "tool"` message with its id — or, on the
   * latest answer while nothing runs, a box to type the result in. Steps are updated in place
   * (not rebuilt), so what the user opened, closed or typed stays. Returns how many calls of
   * this answer still wait for a result the user can give.
   */
  paintSteps(m, r, streaming, last) {
    const calls = callsOf(m);
    r.steps.hidden = !calls.length;
    if (!calls.length) return 0;
    const results = toolResults(r.conv || this.conv);
    const canAnswer = last && !streaming && !this.busy && !m.error && !m.stopped;
    let pending = 0;
    calls.forEach((call, i) => {
      let s = r.stepEls[i];
      if (!s) {
        s = this.buildStep(m, call);
        r.stepEls[i] = s;
        r.steps.append(s.el);
      }
      s.call = call;
      s.el.dataset.callId = call.id;
      const result = results.get(call.id);
      const args = prettyArgs(call.function.arguments);
      put(s.name, call.function.name);
      put(s.args, args.text);
      s.raw.hidden = args.json || streaming;
      const state = result ? 'done' : streaming ? 'calling' : canAnswer ? 'waiting' : 'unanswered';
      s.el.dataset.state = state;
      put(s.badge, { done: t('chat.tool.done'), calling: t('chat.tool.calling'), waiting: t('chat.tool.waiting'), unanswered: t('chat.tool.unanswered') }[state]);
      s.badge.className = `badge${state === 'waiting' ? ' warn' : state === 'done' ? ' good' : ''}`;
      s.result.hidden = !result;
      // The "Result" heading goes with a shown result (the form has its own label).
      s.resultHead.hidden = !result;
      put(s.result, result ? result.content : '');
      s.form.hidden = state !== 'waiting';
      s.send.disabled = false;
      if (state === 'waiting') pending += 1;
    });
    return pending;
  }

  buildStep(m, call) {
    const inputId = nextId('tool-result');
    const s = Object.assign(stepFrame(t('chat.tool.call'), 'tool-step', true), {
      raw: h('p', { class: 'muted tool-raw' }, t('chat.tool.raw')),
      resultHead: h('p', { class: 'tool-label' }, t('chat.tool.result')),
      result: h('pre', { class: 'tool-result' }),
      input: h('textarea', { id: inputId, name: 'tool_result', rows: 2, class: 'mono', placeholder: t('chat.tool.placeholder') }),
      send: h('button', { type: 'submit', class: 'small primary' }, t('chat.tool.send')),
    });
    s.input.setAttribute('aria-label', t('chat.tool.input', { name: call.function.name || '' }));
    s.form = h('form', { class: 'tool-form' },
      h('label', { for: inputId }, t('chat.tool.result')), s.input, h('div', { class: 'row end' }, s.send));
    s.form.addEventListener('submit', (e) => { e.preventDefault(); this.answerCall(m, s); });
    s.input.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.keyCode !== 229) { e.preventDefault(); this.answerCall(m, s); }
    });
    s.body.append(s.raw, s.resultHead, s.result, s.form);
    return s;
  }

  /**
   * An agent's steps: the tool it ran, the arguments, what came back (the daemon's summary),
   * how long it took, and the status (running → ok / error / timeout / refused). A step is
   * found again by its `call` id and updated in place, so whether the user opened it stays.
   */
  paintTrace(m, r) {
    const steps = m.steps || [];
    r.trace.hidden = !steps.length;
    for (const st of steps) {
      const key = st.call || `step-${st.step}`;
      let s = r.traceEls.get(key);
      if (!s) {
        s = stepFrame('', 'tool-step agent-step', this.openSteps.has(key));
        s.el.setAttribute('role', 'listitem');
        s.el.addEventListener('toggle', () => { if (s.el.open) this.openSteps.add(key); else this.openSteps.delete(key); });
        s.summaryHead = h('p', { class: 'tool-label' }, t('chat.step.summary'));
        s.summary = h('p', { class: 'step-summary' });
        s.duration = h('span', { class: 'step-duration muted' });
        s.el.querySelector('summary').append(s.duration);
        s.body.append(s.summaryHead, s.summary);
        r.traceEls.set(key, s);
        r.trace.append(s.el);
      }
      const status = ['running', 'ok', 'error', 'timeout', 'refused'].includes(st.status) ? st.status : 'error';
      s.el.dataset.call = st.call || '';
      s.el.dataset.status = status;
      put(s.kind, t('chat.step', { n: st.step ?? '' }));
      put(s.name, st.tool || '');
      put(s.badge, t(`chat.step.${status}`));
      s.badge.className = `badge${STEP_BADGE[status]}`;
      const args = st.arguments;
      put(s.args, args === undefined || args === null ? '' : typeof args === 'string' ? prettyArgs(args).text : JSON.stringify(args, null, 2));
      const text = st.summary || '';
      put(s.summary, text);
      s.summary.hidden = !text;
      s.summaryHead.hidden = !text;
      put(s.duration, Number.isFinite(st.duration_ms) ? t('chat.step.ms', { ms: st.duration_ms }) : '');
    }
  }

  /**
   * The user's result for one call becomes a `role: "tool"` message right after the answer
   * (after the results already given); once every call of the answer has one, the
   * conversation goes on.
   */
  async answerCall(m, s) {
    const c = this.refs.get(m)?.conv || this.conv;
    if (this.busy || s.form.hidden) return;
    const results = toolResults(c);
    if (results.has(s.call.id)) return;
    const calls = callsOf(m);
    const rest = calls.filter((x) => x !== s.call && !results.has(x.id));
    // Checked before the result is kept, so a bad Tools setting loses nothing.
    if (!rest.length && !this.toolsOrRefuse()) return;
    let at = c.messages.indexOf(m) + 1;
    while (at < c.messages.length && c.messages[at].role === 'tool') at += 1;
    c.messages.splice(at, 0, { role: 'tool', tool_call_id: s.call.id, name: s.call.function.name, content: s.input.value });
    s.input.value = '';
    if (rest.length) {
      this.paint(m, true);
      await this.save(c);
      const next = this.refs.get(m).stepEls.find((x) => x && x.call === rest[0]);
      next?.input.focus();
      return;
    }
    await this.generate(c);
  }

  paintSources(m, r) {
    if (!m.citations || !m.citations.length) { put(r.sources); return; }
    const items = m.citations.map((c) => {
      if (c.url !== undefined) return h('li', null, this.webSource(c));
      const meta = [c.heading, c.page ? t('kb.page', { n: c.page }) : null].filter(Boolean).join(' · ');
      return h('li', null, h('button', {
        type: 'button', class: 'source', onclick: () => this.openCitation(c),
        'aria-label': `${t('kb.sources')} ${c.index}: ${c.filename}${meta ? `, ${meta}` : ''}`,
      }, h('span', { class: 'n' }, String(c.index)), h('span', { class: 'file' }, c.filename || ''), meta ? h('span', { class: 'meta' }, meta) : null));
    });
    put(r.sources, h('h3', null, t('kb.sources')), h('ol', null, items));
  }

  /** A web source: a link to the page (http/https only), its title and host; else the text. */
  webSource(c) {
    const href = safeUrl(c.url);
    const title = c.title || c.url || '';
    const host = href ? new URL(href).host : '';
    const parts = [h('span', { class: 'n' }, String(c.index)), h('span', { class: 'file' }, title), host ? h('span', { class: 'meta' }, host) : null];
    if (!href) return h('span', { class: 'source web' }, parts, h('span', { class: 'meta' }, String(c.url || '')));
    return h('a', {
      class: 'source web', href, target: '_blank', rel: 'noopener noreferrer',
      'aria-label': `${t('kb.sources')} ${c.index}: ${title}${host ? `, ${host}` : ''}`,
    }, parts);
  }

  async copy(text) {
    if (await copyText(text)) toast(t('chat.copied'));
  }

  // --- sending ----------------------------------------------------------------------------

  async send() {
    const text = this.input.value.trim();
    if (!text || this.busy) return;
    if (!this.modelSel.value) {
      toast(t('err.loading'));
      this.loadModels();
      return;
    }
    if (!isAgent(this.modelSel.value) && !this.toolsOrRefuse()) return;
    const c = this.conv;
    if (!c.messages.length) c.title = titleOf(text);
    c.model = this.modelSel.value;
    c.messages.push({ role: 'user', content: text });
    this.input.value = '';
    this.grow();
    await this.generate(c);
  }

  async regenerate() {
    const c = this.conv;
    if (this.busy || !c.messages.length) return;
    if (!isAgent(c.model) && !this.toolsOrRefuse()) return;
    // The latest answer goes, with the results the user gave its calls so far.
    while (c.messages.length && c.messages[c.messages.length - 1].role === 'tool') c.messages.pop();
    if (c.messages.length && c.messages[c.messages.length - 1].role === 'assistant') c.messages.pop();
    await this.generate(c);
  }

  stop() {
    if (this.busy) {
      this.busy.msg.stopped = true;
      this.busy.controller.abort();
    }
  }

  /**
   * The request for conversation `c`. An agent brings its own instructions, tools and sources:
   * the system prompt, Tools, knowledge and web search settings are not sent with it (the
   * daemon refuses client tools for agents).
   */
  requestBody(c) {
    const s = this.settings;
    const model = this.fixed || c.model || this.modelSel.value;
    const agent = isAgent(model);
    const messages = [];
    if (!agent && s.system && s.system.trim()) messages.push({ role: 'system', content: s.system.trim() });
    const results = toolResults(c);
    for (const m of c.messages) {
      if (m.role === 'user') messages.push({ role: 'user', content: m.content });
      else if (m.role === 'tool') messages.push({ role: 'tool', tool_call_id: m.tool_call_id, content: m.content });
      else if (!m.error) {
        // Only answered calls go back: every call in a request needs its tool message (the
        // user may have moved on without giving some results).
        const calls = callsOf(m).filter((x) => results.has(x.id));
        if (calls.length) {
          messages.push({
            role: 'assistant', content: m.content || null,
            tool_calls: calls.map((x) => ({ id: x.id, type: x.type || 'function', function: { name: x.function.name, arguments: x.function.arguments } })),
          });
        } else if (m.content) messages.push({ role: 'assistant', content: m.content });
      }
    }
    const body = { model, messages };
    if (s.stream !== false) body.stream_options = { include_usage: true };
    const tools = agent ? null : parseTools(s.tools).tools;
    if (tools) body.tools = tools;
    const temperature = num(s.temperature);
    const maxTokens = num(s.maxTokens);
    const budget = num(s.budget);
    if (temperature !== undefined) body.temperature = temperature;
    if (maxTokens !== undefined) body.max_tokens = Math.round(maxTokens);
    if (budget !== undefined) body.max_reasoning_tokens = Math.round(budget);
    if (!agent && c.knowledge && c.knowledge.length) body.knowledge = { collections: c.knowledge, top_k: 5 };
    if (!agent && c.web && !this.webOff) body.web_search = true;
    return body;
  }

  async generate(c) {
    const body = this.requestBody(c);
    const msg = { role: 'assistant', content: '', reasoning: '', citations: null, model: body.model };
    c.messages.push(msg);
    const controller = new AbortController();
    this.busy = { controller, msg, conv: c };
    this.sendBtn.hidden = true;
    this.stopBtn.hidden = false;
    if (c === this.conv) {
      this.renderConv();
    }
    await this.save(c);
    this.renderList();
    const started = performance.now();
    let thinkStart = null;
    let pending = false;
    const refresh = () => {
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => {
        pending = false;
        const nearBottom = this.msgs.scrollHeight - this.msgs.scrollTop - this.msgs.clientHeight < 80;
        this.paint(msg, true);
        if (nearBottom) this.msgs.scrollTop = this.msgs.scrollHeight;
      });
    };
    try {
      if (this.settings.stream === false) {
        // One JSON answer: `message` is whole, `tool_calls` included.
        const r = await api('POST', '/v1/chat/completions', { ...body, stream: false }, { signal: controller.signal });
        if (Array.isArray(r.citations)) msg.citations = addCitations(msg.citations || [], r.citations);
        if (r.agent && Array.isArray(r.agent.steps)) {
          msg.steps = [];
          for (const st of r.agent.steps) {
            addStep(msg.steps, st);
            if (Array.isArray(st.citations)) msg.citations = addCitations(msg.citations || [], st.citations);
          }
        }
        // Why an agent stopped early (the step limit): `agent.stopped`, or `agent_stopped`.
        const stopped = r.agent?.stopped ?? r.agent_stopped;
        if (stopped) msg.agentStopped = stopped;
        const ch = r.choices && r.choices[0];
        const m = (ch && ch.message) || {};
        msg.reasoning = m.reasoning_content ?? m.reasoning ?? '';
        msg.content = m.content || '';
        if (Array.isArray(m.tool_calls) && m.tool_calls.length) msg.tool_calls = m.tool_calls;
        if (ch && ch.finish_reason) msg.finish = ch.finish_reason;
        if (r.usage) msg.usage = r.usage;
      } else {
        await streamChat(body, controller.signal, (chunk) => {
          if (Array.isArray(chunk.citations)) msg.citations = addCitations(msg.citations || [], chunk.citations);
          if (chunk.agent_step) {
            addStep(msg.steps ??= [], chunk.agent_step);
            if (Array.isArray(chunk.agent_step.citations)) msg.citations = addCitations(msg.citations || [], chunk.agent_step.citations);
          }
          const stopped = chunk.agent?.stopped ?? chunk.agent_stopped;
          if (stopped) msg.agentStopped = stopped;
          const ch = chunk.choices && chunk.choices[0];
          const d = ch && ch.delta;
          if (d) {
            const r = d.reasoning_content ?? d.reasoning;
            if (r) { if (thinkStart === null) thinkStart = performance.now(); msg.reasoning += r; }
            if (d.content) {
              if (thinkStart !== null && !msg.thinkMs) msg.thinkMs = performance.now() - thinkStart;
              msg.content += d.content;
            }
            if (Array.isArray(d.tool_calls)) addToolDeltas(msg.tool_calls ??= [], d.tool_calls);
          }
          if (ch && ch.finish_reason) msg.finish = ch.finish_reason;
          if (chunk.usage) msg.usage = chunk.usage;
          refresh();
        });
      }
    } catch (e) {
      if (e && e.name === 'AbortError') msg.stopped = true;
      else if (body.web_search && e instanceof ApiError && this.webRefused(e)) msg.error = this.webReason();
      // Anything else is the connection breaking mid-answer.
      else msg.error = e instanceof ApiError ? e.friendly : t('chat.cut');
    } finally {
      if (thinkStart !== null && !msg.thinkMs) msg.thinkMs = performance.now() - thinkStart;
      msg.ms = Math.round(performance.now() - started);
      this.busy = null;
      this.sendBtn.hidden = false;
      this.stopBtn.hidden = true;
      // Everything but the latest answer loses its Regenerate button.
      if (c === this.conv) this.renderConv();
      await this.save(c);
      this.renderList();
      if (c === this.conv) this.input.focus();
    }
  }

  /**
   * A request with web search refused for that reason: the key lacks the `web` scope (403), or
   * the appliance has no search service configured (400). The toggle goes off and says why.
   */
  webRefused(e) {
    if (e.status === 403 && e.code === 'insufficient_scope') { this.setWebOff('denied'); return true; }
    if (e.status === 400 && /web_search/.test(e.message) && /not configured/.test(e.message)) { this.setWebOff('unconfigured'); return true; }
    return false;
  }

  // --- knowledge ----------------------------------------------------------------------------

  updateKbButton() {
    const n = (this.conv && this.conv.knowledge && this.conv.knowledge.length) || 0;
    put(this.kbBtn, n ? t('kb.toggle.n', { n }) : t('kb.toggle'));
    this.kbBtn.setAttribute('aria-pressed', n ? 'true' : 'false');
    this.kbBtn.classList.toggle('on', n > 0);
  }

  async fillKb() {
    put(this.kbPanel, h('p', { class: 'muted' }, '…'));
    let list;
    try {
      list = (await api('GET', '/v1/kb/collections')).data || [];
    } catch (e) {
      const text = e.status === 404 ? t('kb.unavailable') : e.status === 403 ? t('kb.forbidden') : e.friendly || String(e);
      put(this.kbPanel, h('p', { class: 'muted' }, text));
      return;
    }
    // A chosen collection this key can no longer read (deleted, scope taken away) is dropped.
    const readable = new Set(list.map((col) => col.name));
    if ((this.conv.knowledge || []).some((n) => !readable.has(n))) {
      this.conv.knowledge = this.conv.knowledge.filter((n) => readable.has(n));
      this.updateKbButton();
    }
    if (!list.length) { put(this.kbPanel, h('p', { class: 'muted' }, t('kb.none'))); return; }
    const chosen = new Set(this.conv.knowledge || []);
    const boxes = list.map((col) => {
      const id = nextId('kbc');
      const box = h('input', { type: 'checkbox', id, value: col.name, checked: chosen.has(col.name) });
      box.addEventListener('change', () => {
        const set = new Set(this.conv.knowledge || []);
        if (box.checked) set.add(col.name); else set.delete(col.name);
        this.conv.knowledge = [...set];
        localStorage.setItem(this.pref(KB_DEFAULT), JSON.stringify(this.conv.knowledge));
        this.updateKbButton();
        if (this.conv.saved) this.save();
      });
      return h('li', null, box, h('label', { for: id }, col.name, h('span', { class: 'muted' }, ` · ${t('kb.docs.n', { d: col.documents ?? 0, c: col.chunks ?? 0 })}`)));
    });
    put(this.kbPanel, h('p', { class: 'popover-title' }, t('kb.choose')), h('ul', { class: 'checks' }, boxes));
  }

  async openCitation(c) {
    if (c.url !== undefined) { this.openWebCitation(c); return; }
    const titleId = nextId('cite');
    const docBox = h('div', { class: 'doc' }, h('p', { class: 'muted' }, '…'));
    const close = h('button', { type: 'button', class: 'ghost', 'aria-label': t('kb.close') }, '✕');
    const meta = [c.collection, c.heading, c.page ? t('kb.page', { n: c.page }) : null].filter(Boolean).join(' · ');
    const dlg = h('dialog', { class: 'cite-dialog', 'aria-labelledby': titleId },
      h('header', null, h('h2', { id: titleId }, `[${c.index}] ${c.filename || ''}`), close),
      meta ? h('p', { class: 'muted' }, meta) : null,
      h('h3', null, t('kb.chunk')),
      h('blockquote', { class: 'chunk' }, c.text || ''),
      h('h3', null, t('kb.document')),
      docBox);
    close.addEventListener('click', () => dlg.close());
    dlg.addEventListener('close', () => dlg.remove());
    document.body.append(dlg);
    dlg.showModal();
    close.focus();
    if (!c.collection || !c.document_id) { put(docBox); return; }
    try {
      const doc = await api('GET', `/v1/kb/collections/${encodeURIComponent(c.collection)}/documents/${encodeURIComponent(c.document_id)}`);
      const parts = (doc.chunks || []).map((ch) => {
        const cited = ch.chunk_id === c.chunk_id;
        return h('div', { class: cited ? 'doc-chunk cited' : 'doc-chunk', 'aria-current': cited ? 'true' : null },
          ch.heading ? h('p', { class: 'muted' }, ch.heading) : null, h('p', null, ch.text || ''));
      });
      put(docBox, parts);
      const cited = docBox.querySelector('.cited');
      if (cited) cited.scrollIntoView({ block: 'center' });
    } catch (e) {
      put(docBox, h('p', { class: 'muted' }, e.friendly || String(e)));
    }
  }

  /** A web source's dialog: title, the link, and the text the model was given. */
  openWebCitation(c) {
    const titleId = nextId('cite');
    const close = h('button', { type: 'button', class: 'ghost', 'aria-label': t('kb.close') }, '✕');
    const href = safeUrl(c.url);
    const dlg = h('dialog', { class: 'cite-dialog', 'aria-labelledby': titleId },
      h('header', null, h('h2', { id: titleId }, `[${c.index}] ${c.title || c.url || ''}`), close),
      href ? h('p', null, h('a', { href, target: '_blank', rel: 'noopener noreferrer', class: 'web-link' }, href))
        : h('p', { class: 'muted' }, String(c.url || '')),
      h('h3', null, t('kb.chunk')),
      h('blockquote', { class: 'chunk' }, c.text || ''));
    close.addEventListener('click', () => dlg.close());
    dlg.addEventListener('close', () => dlg.remove());
    document.body.append(dlg);
    dlg.showModal();
    close.focus();
  }
}
