// The console's entry point: sign-in, the page frame, and switching between Chat, Knowledge,
// Agents, Models, Usage, Audit and Admin (hash routes: #/chat, #/knowledge, #/agents, #/models,
// #/usage, #/audit, #/admin; the last five for keys with the `admin` scope).

import { h, put, toast } from './dom.js';
import { t, lang } from './i18n.js';
import {
  api, session, whenUnauthorized, ApiError, directoryLogin, directoryLogout, directoryOffered,
  resumeDirectory,
} from './api.js';
import { ownerOf, removeOwner } from './store.js';
import { ChatView } from './chat.js';

const root = document.getElementById('app');
document.documentElement.lang = lang === 'zh' ? 'zh-CN' : 'en';
document.title = t('app.title');

const views = {};
let current = null;
let isAdmin = false;
// GET /v1/me: what the key may do; the tabs and controls follow it (null: an older daemon).
let me = null;
let canKb = true;
let nav = null;

function route() {
  const name = (location.hash.replace(/^#\/?/, '') || 'chat').split('/')[0];
  if (name === 'admin' && isAdmin) return 'admin';
  if (name === 'agents' && isAdmin) return 'agents';
  if (name === 'models' && isAdmin) return 'models';
  if (name === 'usage' && isAdmin) return 'usage';
  if (name === 'audit' && isAdmin) return 'audit';
  if (name === 'knowledge' && canKb) return 'knowledge';
  return 'chat';
}

async function view(name) {
  if (!views[name]) {
    if (name === 'chat') views.chat = new ChatView(await ownerOf(session.owner), { admin: isAdmin, me });
    else if (name === 'knowledge') views.knowledge = new (await import('./kb.js')).KnowledgeView({ me });
    else if (name === 'agents') views.agents = new (await import('./agents.js')).AgentsView();
    else if (name === 'models') views.models = new (await import('./models.js')).ModelsView();
    else if (name === 'usage') views.usage = new (await import('./usage.js')).UsageView();
    else if (name === 'audit') views.audit = new (await import('./audit.js')).AuditView();
    else views.admin = new (await import('./admin.js')).AdminView();
  }
  return views[name];
}

async function show() {
  if (!session.active) return;
  const name = route();
  const main = document.getElementById('main');
  if (!main) return;
  const v = await view(name);
  if (!session.active) return; // signed out meanwhile
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
    link('chat', t('nav.chat')), link('knowledge', t('nav.kb'), !canKb), link('agents', t('nav.agents'), !isAdmin),
    link('models', t('nav.models'), !isAdmin), link('usage', t('nav.usage'), !isAdmin), link('audit', t('nav.audit'), !isAdmin),
    link('admin', t('nav.admin'), !isAdmin));
  const out = h('button', { type: 'button', class: 'ghost', onclick: () => signOut(t('signin.out')) }, t('signout'));
  put(root,
    h('header', { class: 'top' },
      h('span', { class: 'brand' }, h('img', { src: '/console/icon.svg', alt: '', width: 22, height: 22 }), 'edgeseek'),
      nav, h('span', { class: 'spacer' }), out),
    h('main', { id: 'main', tabindex: '-1' }));
}

async function enter() {
  // The pages and controls are those the key may use, as the daemon says (no probing).
  try {
    me = await api('GET', '/v1/me');
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return; // signed out by the listener
    me = null;
  }
  isAdmin = !!me?.can?.admin;
  canKb = me ? !!me.can.knowledge : true;
  frame();
  await show();
}

async function signOut(message, { server = true } = {}) {
  const owner = session.owner;
  // A directory session is closed on the daemon too (not only forgotten here); when the
  // daemon already refused it (401) there is nothing left to close.
  if (session.user && server) await directoryLogout();
  session.clear();
  for (const v of Object.values(views)) v.destroy?.();
  for (const k of Object.keys(views)) delete views[k];
  current = null;
  isAdmin = false;
  me = null;
  canKb = true;
  // The conversations go with the key (a shared browser keeps nothing of a signed-out user),
  // before the sign-in form shows: whoever sits down next finds nothing.
  if (owner) {
    try { await removeOwner(await ownerOf(owner)); } catch (e) { toast(String(e)); }
  }
  signIn(message);
}

/** The company-account form (username and password), shown when the daemon has a directory. */
function directoryForm(onDone) {
  const user = h('input', {
    id: 'dir-user', name: 'username', type: 'text', autocomplete: 'username', spellcheck: 'false',
    required: true, 'aria-describedby': 'dir-msg',
  });
  const pass = h('input', {
    id: 'dir-pass', name: 'password', type: 'password', autocomplete: 'current-password',
    required: true, 'aria-describedby': 'dir-msg',
  });
  const msg = h('p', { id: 'dir-msg', class: 'formmsg', role: 'alert' });
  const submit = h('button', { type: 'submit', class: 'primary' }, t('signin.dir.submit'));
  const form = h('form', { class: 'signin card', 'aria-labelledby': 'dir-title' },
    h('h1', { id: 'dir-title' }, h('img', { src: '/console/icon.svg', alt: '', width: 28, height: 28 }), t('signin.dir.title')),
    h('label', { for: 'dir-user' }, t('signin.dir.user')), user,
    h('label', { for: 'dir-pass' }, t('signin.dir.password')), pass, msg, submit);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    msg.className = 'formmsg';
    if (!user.value.trim() || !pass.value) { put(msg, t('signin.dir.empty')); msg.classList.add('error'); return; }
    submit.disabled = true;
    put(msg, t('signin.checking'));
    try {
      await directoryLogin(user.value.trim(), pass.value);
      pass.value = '';
      await onDone();
    } catch (err) {
      const text = err.status === 401 ? t('signin.dir.rejected')
        : err.status === 403 && err.code === 'no_mapped_group' ? t('signin.dir.nogroup')
          : err.status === 429 ? t('signin.dir.limited')
            : err.status === 0 ? t('signin.network') : err.friendly || String(err);
      put(msg, text);
      msg.classList.add('error');
      submit.disabled = false;
      pass.value = '';
      pass.focus();
    }
  });
  return { form, msg, focus: () => user.focus() };
}

async function signIn(message) {
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
  // Offered only when the daemon has a directory; the key form stays for everyone else.
  if (await directoryOffered()) {
    if (!form.isConnected) return; // signed in with a key meanwhile
    const dir = directoryForm(enter);
    form.parentNode.insertBefore(dir.form, form);
    form.parentNode.classList.add('stack');
    form.classList.add('key-alt');
    // One h1 on the page: the company account's; the key form becomes its alternative.
    form.querySelector('h1').replaceWith(h('h2', { id: 'signin-title' }, t('signin.key.title')));
    put(form.querySelector('.lead'), t('signin.dir.or'));
    if (message) { put(dir.msg, message); dir.msg.classList.add('note'); put(msg, ''); msg.classList.remove('note'); }
    dir.focus();
  }
}

whenUnauthorized(() => {
  if (session.key) signOut(t('signin.revoked'));
  else if (session.user) signOut(t('signin.dir.ended'), { server: false });
});
window.addEventListener('hashchange', () => { show().catch((e) => toast(String(e))); });
window.addEventListener('unhandledrejection', (e) => {
  if (e.reason instanceof ApiError) { toast(e.reason.friendly); e.preventDefault(); }
});

const skip = document.querySelector('.skip');
if (skip) skip.textContent = lang === 'zh' ? '跳到主要内容' : 'Skip to content';

if (session.key) enter();
else if (session.user) {
  // A reload: the cookie may still hold the session; ask for it (and its CSRF token).
  resumeDirectory().then(enter, () => { session.clear(); signIn(); });
} else signIn();
