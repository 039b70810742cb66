// Chat: conversations (IndexedDB), model picker, streamed answers with a thinking panel,
// stop / regenerate / copy, knowledge collections with numbered sources, and tool calls: the
// user's own `tools` (Settings), each call the model makes shown as a collapsible step where the
// user types its result, which goes back as a `role: "tool"` message.

import { h, put, copyText, confirmDialog, toast, nextId } from './dom.js';
import { t } from './i18n.js';
import { api, streamChat, ApiError } from './api.js';
import * as store from './store.js';
import { renderMarkdown } from './markdown.js';

const SETTINGS = 'edgeseek.chat.settings';
const KB_DEFAULT = 'edgeseek.chat.knowledge';

function loadSettings() {
  const d = { system: '', temperature: '', maxTokens: '', budget: '', tools: '', stream: true };
  try { return { ...d, ...JSON.parse(localStorage.getItem(SETTINGS) || '{}') }; } catch { return d; }
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
  constructor(owner) {
    this.owner = owner;
    this.conv = null;
    this.busy = null; // { controller, msg, conv }
    this.refs = new WeakMap(); // message → its elements
    this.settings = loadSettings();
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
    this.modelSel = h('select', { id: modelId, onchange: () => { if (this.conv) this.conv.model = this.modelSel.value; } });
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

    // Settings popover.
    const field = (label, input) => { const id = nextId('set'); input.id = id; return h('div', { class: 'field' }, h('label', { for: id }, label), input); };
    const setting = (k, props) => {
      const el = h(props.tag || 'input', { ...props, tag: undefined, value: this.settings[k] });
      el.addEventListener('input', () => { this.settings[k] = el.value; localStorage.setItem(SETTINGS, JSON.stringify(this.settings)); });
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

    this.el = h('div', { class: 'chat' },
      this.convs,
      h('section', { class: 'chat-main', 'aria-label': t('nav.chat') },
        h('div', { class: 'toolbar' },
          this.convToggle,
          h('label', { for: modelId, class: 'inline' }, t('chat.model')), this.modelSel,
          h('span', { class: 'spacer' }),
          h('div', { class: 'pop-wrap' }, this.kbBtn, this.kbPanel),
          h('div', { class: 'pop-wrap' }, this.setBtn, this.setPanel)),
        this.msgs, form));

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
    box.addEventListener('change', () => { this.settings.stream = box.checked; localStorage.setItem(SETTINGS, JSON.stringify(this.settings)); });
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
      localStorage.setItem(SETTINGS, JSON.stringify(this.settings));
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
    await this.loadModels();
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

  async loadModels() {
    clearTimeout(this.modelTimer);
    let data = [];
    try {
      data = (await api('GET', '/v1/models')).data || [];
    } catch (e) {
      if (e.status === 401) return;
    }
    const want = this.conv?.model || this.modelSel.value;
    put(this.modelSel, data.length
      ? data.map((m) => h('option', { value: m.id, selected: m.id === want }, m.id))
      : h('option', { value: '' }, t('chat.nomodel')));
    if (!data.length) this.modelTimer = setTimeout(() => this.loadModels(), 5000);
  }

  // --- conversations -----------------------------------------------------------------------

  newChat() {
    let kb = [];
    try { kb = JSON.parse(localStorage.getItem(KB_DEFAULT) || '[]'); } catch { kb = []; }
    this.conv = {
      id: store.newId(), owner: this.owner, title: t('chat.untitled'), created: Date.now(), updated: Date.now(),
      model: this.modelSel.value, knowledge: kb, messages: [], saved: false,
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
    this.renderConv();
    this.renderList();
    this.convs.classList.remove('open');
  }

  async save(conv = this.conv) {
    conv.updated = Date.now();
    conv.saved = true;
    await store.save(conv);
  }

  async renderList() {
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
    const answer = h('div', { class: 'answer md' });
    const sources = h('div', { class: 'sources' });
    const steps = h('div', { class: 'tool-steps' });
    const status = h('p', { class: 'status' });
    const actions = h('div', { class: 'actions' });
    const el = h('article', { class: 'msg assistant', 'aria-label': t('chat.assistant') }, thinking, answer, steps, sources, status, actions);
    this.refs.set(m, { el, summary, thinkBody, thinking, answer, steps, stepEls: [], conv, sources, status, actions });
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
    }
    const opts = {
      citations: m.citations || [],
      onCite: (c) => this.openCitation(c),
      onCopy: (text) => this.copy(text),
      copyLabel: t('chat.copy'),
      sourceLabel: t('kb.sources'),
    };
    put(r.answer, renderMarkdown(m.content || '', opts));
    const pending = this.paintSteps(m, r, streaming, last);
    this.paintSources(m, r);
    r.status.className = 'status';
    if (m.error) { put(r.status, m.error); r.status.classList.add('error'); r.status.setAttribute('role', 'alert'); }
    else if (m.stopped) put(r.status, t('chat.stopped'));
    else if (!streaming && m.finish === 'length') put(r.status, t('chat.length'));
    else if (pending) put(r.status, pending === 1 ? t('chat.tool.asked.1') : t('chat.tool.asked', { n: pending }));
    else if (streaming && !m.content && !m.reasoning && !callsOf(m).length) { put(r.status, t('chat.waiting')); r.status.classList.add('live'); }
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
    const s = {
      name: h('span', { class: 'tool-name mono' }),
      badge: h('span', { class: 'badge' }),
      args: h('pre', { class: 'tool-args' }),
      raw: h('p', { class: 'muted tool-raw' }, t('chat.tool.raw')),
      resultHead: h('p', { class: 'tool-label' }, t('chat.tool.result')),
      result: h('pre', { class: 'tool-result' }),
      input: h('textarea', { id: inputId, name: 'tool_result', rows: 2, class: 'mono', placeholder: t('chat.tool.placeholder') }),
      send: h('button', { type: 'submit', class: 'small primary' }, t('chat.tool.send')),
    };
    s.input.setAttribute('aria-label', t('chat.tool.input', { name: call.function.name || '' }));
    s.form = h('form', { class: 'tool-form' },
      h('label', { for: inputId }, t('chat.tool.result')), s.input, h('div', { class: 'row end' }, s.send));
    s.form.addEventListener('submit', (e) => { e.preventDefault(); this.answerCall(m, s); });
    s.input.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.keyCode !== 229) { e.preventDefault(); this.answerCall(m, s); }
    });
    s.el = h('details', { class: 'tool-step', open: true },
      h('summary', null, h('span', { class: 'tool-kind' }, t('chat.tool.call')), s.name, s.badge),
      h('div', { class: 'tool-body' },
        h('p', { class: 'tool-label' }, t('chat.tool.args')), s.args, s.raw,
        s.resultHead, s.result, s.form));
    return s;
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
      const meta = [c.heading, c.page ? t('kb.page', { n: c.page }) : null].filter(Boolean).join(' · ');
      return h('li', null, h('button', {
        type: 'button', class: 'source', onclick: () => this.openCitation(c),
        'aria-label': `${t('kb.sources')} ${c.index}: ${c.filename}${meta ? `, ${meta}` : ''}`,
      }, h('span', { class: 'n' }, String(c.index)), h('span', { class: 'file' }, c.filename || ''), meta ? h('span', { class: 'meta' }, meta) : null));
    });
    put(r.sources, h('h3', null, t('kb.sources')), h('ol', null, items));
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
    if (!this.toolsOrRefuse()) return;
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
    if (!this.toolsOrRefuse()) return;
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

  requestBody(c) {
    const s = this.settings;
    const messages = [];
    if (s.system && s.system.trim()) messages.push({ role: 'system', content: s.system.trim() });
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
    const body = { model: c.model || this.modelSel.value, messages };
    if (s.stream !== false) body.stream_options = { include_usage: true };
    const tools = parseTools(s.tools).tools;
    if (tools) body.tools = tools;
    const temperature = num(s.temperature);
    const maxTokens = num(s.maxTokens);
    const budget = num(s.budget);
    if (temperature !== undefined) body.temperature = temperature;
    if (maxTokens !== undefined) body.max_tokens = Math.round(maxTokens);
    if (budget !== undefined) body.max_reasoning_tokens = Math.round(budget);
    if (c.knowledge && c.knowledge.length) body.knowledge = { collections: c.knowledge, top_k: 5 };
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
        if (Array.isArray(r.citations)) msg.citations = r.citations;
        const ch = r.choices && r.choices[0];
        const m = (ch && ch.message) || {};
        msg.reasoning = m.reasoning_content ?? m.reasoning ?? '';
        msg.content = m.content || '';
        if (Array.isArray(m.tool_calls) && m.tool_calls.length) msg.tool_calls = m.tool_calls;
        if (ch && ch.finish_reason) msg.finish = ch.finish_reason;
        if (r.usage) msg.usage = r.usage;
      } else {
        await streamChat(body, controller.signal, (chunk) => {
          if (Array.isArray(chunk.citations)) msg.citations = chunk.citations;
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
    if (!list.length) { put(this.kbPanel, h('p', { class: 'muted' }, t('kb.none'))); return; }
    const chosen = new Set(this.conv.knowledge || []);
    const boxes = list.map((col) => {
      const id = nextId('kbc');
      const box = h('input', { type: 'checkbox', id, value: col.name, checked: chosen.has(col.name) });
      box.addEventListener('change', () => {
        const set = new Set(this.conv.knowledge || []);
        if (box.checked) set.add(col.name); else set.delete(col.name);
        this.conv.knowledge = [...set];
        localStorage.setItem(KB_DEFAULT, JSON.stringify(this.conv.knowledge));
        this.updateKbButton();
        if (this.conv.saved) this.save();
      });
      return h('li', null, box, h('label', { for: id }, col.name, h('span', { class: 'muted' }, ` · ${t('kb.docs.n', { d: col.documents ?? 0, c: col.chunks ?? 0 })}`)));
    });
    put(this.kbPanel, h('p', { class: 'popover-title' }, t('kb.choose')), h('ul', { class: 'checks' }, boxes));
  }

  async openCitation(c) {
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
}
