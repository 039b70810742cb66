// The console's entry point: sign-in, the page frame, and switching between Chat, Knowledge,
// Agents, Usage, Audit and Admin (hash routes: #/chat, #/knowledge, #/agents, #/usage, #/audit,
// #/admin; the last four for keys with the `admin` scope).

import { h, put, toast } from './dom.js';
import { t, lang } from './i18n.js';
import { api, session, whenUnauthorized, ApiError } from './api.js';
import { ownerOf, removeOwner } from './store.js';
import { ChatView } from './chat.js';

const root = document.getElementById('app');
document.documentElement.lang = lang === 'zh' ? 'zh-CN' : 'en';
document.title = t('app.title');

const views = {};
let current = null;
let isAdmin = false;
let nav = null;

function route() {
  const name = (location.hash.replace(/^#\/?/, '') || 'chat').split('/')[0];
  if (name === 'admin' && isAdmin) return 'admin';
  if (name === 'agents' && isAdmin) return 'agents';
  if (name === 'usage' && isAdmin) return 'usage';
  if (name === 'audit' && isAdmin) return 'audit';
  if (name === 'knowledge') return 'knowledge';
  return 'chat';
}

async function view(name) {
  if (!views[name]) {
    if (name === 'chat') views.chat = new ChatView(await ownerOf(session.key), { admin: isAdmin });
    else if (name === 'knowledge') views.knowledge = new (await import('./kb.js')).KnowledgeView();
    else if (name === 'agents') views.agents = new (await import('./agents.js')).AgentsView();
    else if (name === 'usage') views.usage = new (await import('./usage.js')).UsageView();
    else if (name === 'audit') views.audit = new (await import('./audit.js')).AuditView();
    else views.admin = new (await import('./admin.js')).AdminView();
  }
  return views[name];
}

async function show() {
  if (!session.key) return;
  const name = route();
  const main = document.getElementById('main');
  if (!main) return;
  const v = await view(name);
  if (!session.key) return; // signed out meanwhile
  if (current && current !== v) current.hide?.();
  current = v;
  if (v.el.parentNode !== main) put(main, v.el);
  v.show?.();
  for (const a of nav.querySelectorAll('a')) {
    if (a.dataset.route === name) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

function frame() {
  const link = (r, label, hidden) => h('a', { href: `#/${r}`, dataset: { route: r }, hidden }, label);
  nav = h('nav', { class: 'tabs', 'aria-label': t('nav.label') },
    link('chat', t('nav.chat')), link('knowledge', t('nav.kb')), link('agents', t('nav.agents'), !isAdmin),
    link('usage', t('nav.usage'), !isAdmin), link('audit', t('nav.audit'), !isAdmin),
    link('admin', t('nav.admin'), !isAdmin));
  const out = h('button', { type: 'button', class: 'ghost', onclick: () => signOut(t('signin.out')) }, t('signout'));
  put(root,
    h('header', { class: 'top' },
      h('span', { class: 'brand' }, h('img', { src: '/console/icon.svg', alt: '', width: 22, height: 22 }), 'edgeseek'),
      nav, h('span', { class: 'spacer' }), out),
    h('main', { id: 'main', tabindex: '-1' }));
}

async function enter() {
  // The admin page is offered to keys that may use it (403 for the others).
  try {
    await api('GET', '/v1/admin/status');
    isAdmin = true;
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return; // signed out by the listener
    isAdmin = false;
  }
  frame();
  await show();
}

async function signOut(message) {
  const key = session.key;
  session.clear();
  for (const v of Object.values(views)) v.destroy?.();
  for (const k of Object.keys(views)) delete views[k];
  current = null;
  isAdmin = false;
  // The conversations go with the key (a shared browser keeps nothing of a signed-out user),
  // before the sign-in form shows: whoever sits down next finds nothing.
  if (key) {
    try { await removeOwner(await ownerOf(key)); } catch (e) { toast(String(e)); }
  }
  signIn(message);
}

function signIn(message) {
  const input = h('input', {
    id: 'key', name: 'key', type: 'password', autocomplete: 'off', spellcheck: 'false',
    required: true, 'aria-describedby': 'signin-msg', placeholder: 'es-…',
  });
  const msg = h('p', { id: 'signin-msg', class: 'formmsg', role: 'alert' }, message || '');
  if (message) msg.classList.add('note');
  const submit = h('button', { type: 'submit', class: 'primary' }, t('signin.submit'));
  const form = h('form', { class: 'signin card', 'aria-labelledby': 'signin-title' },
    h('h1', { id: 'signin-title' }, h('img', { src: '/console/icon.svg', alt: '', width: 28, height: 28 }), t('signin.title')),
    h('p', { class: 'lead' }, t('signin.lead')),
    h('label', { for: 'key' }, t('signin.key')), input, msg, submit);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const key = input.value.trim();
    msg.className = 'formmsg';
    if (!key) { put(msg, t('signin.empty')); msg.classList.add('error'); return; }
    submit.disabled = true;
    put(msg, t('signin.checking'));
    try {
      await api('GET', '/v1/models', undefined, { key });
      session.set(key);
      input.value = '';
      await enter();
    } catch (err) {
      put(msg, err.status === 401 ? t('signin.rejected') : err.status === 0 ? t('signin.network') : err.friendly || String(err));
      msg.classList.add('error');
      submit.disabled = false;
      input.focus();
      input.select();
    }
  });
  put(root, h('main', { id: 'main', class: 'center' }, form));
  input.focus();
}

whenUnauthorized(() => {
  if (session.key) signOut(t('signin.revoked'));
});
window.addEventListener('hashchange', () => { show().catch((e) => toast(String(e))); });
window.addEventListener('unhandledrejection', (e) => {
  if (e.reason instanceof ApiError) { toast(e.reason.friendly); e.preventDefault(); }
});

const skip = document.querySelector('.skip');
if (skip) skip.textContent = lang === 'zh' ? '跳到主要内容' : 'Skip to content';

if (session.key) enter(); else signIn();
