// Talking to the daemon: the bearer key (sessionStorage only, never in a URL) or the session
// cookie of a directory sign-in (HttpOnly: this script never sees it; only the user name is
// kept, and the CSRF token in memory), JSON calls with OpenAI-style errors, the SSE chat
// stream over fetch, uploads with progress over XHR.

import { t } from './i18n.js';

const KEY = 'edgeseek.key';
const USER = 'edgeseek.user';
// The CSRF token of the directory session: in memory only (a reload asks for it again).
let csrfToken = null;

export const session = {
  get key() { return sessionStorage.getItem(KEY); },
  /** The directory account signed in (its session is the cookie), if any. */
  get user() { return sessionStorage.getItem(USER); },
  /** Signed in, by key or by directory account. */
  get active() { return Boolean(this.key || this.user); },
  /** Whose conversations this tab shows. */
  get owner() { return this.key || (this.user ? `user:${this.user}` : null); },
  set(key) { sessionStorage.removeItem(USER); sessionStorage.setItem(KEY, key); },
  setUser(user, csrf) {
    sessionStorage.removeItem(KEY);
    sessionStorage.setItem(USER, user);
    csrfToken = csrf;
  },
  clear() { sessionStorage.removeItem(KEY); sessionStorage.removeItem(USER); csrfToken = null; },
};

/** An error answer from the API (or 0 for no answer at all). */
export class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || (status ? t('err.status', { status }) : t('err.network')));
    this.status = status;
    this.code = e.code || null;
    this.param = e.param || null;
    this.type = e.type || null;
  }

  /** The message to show a person. */
  get friendly() {
    if (this.status === 0) return t('err.network');
    if (this.code === 'model_loading') return t('err.loading');
    if (this.status === 403 && this.code === 'insufficient_scope') {
      const m = /`([^`]+)`/.exec(this.message);
      return t('err.scope', { scope: m ? m[1] : '' });
    }
    return this.message;
  }
}

/** Listeners told when the daemon refuses the key (401): revoked while signed in. */
const onUnauthorized = new Set();
export function whenUnauthorized(f) { onUnauthorized.add(f); }
function refused(err) {
  if (err.status === 401) for (const f of onUnauthorized) f(err);
}

/** The credentials of a call: the bearer key, or for a directory session the CSRF token on
 * anything that changes state (the cookie goes along by itself, same-origin only). */
function authHeaders(method, extra) {
  if (session.key || !session.user) return { Authorization: `Bearer ${session.key || ''}`, ...extra };
  const writes = method !== 'GET' && method !== 'HEAD';
  return writes && csrfToken ? { 'X-CSRF-Token': csrfToken, ...extra } : { ...extra };
}

/** Cookies only for a directory session (never sent along with a key). */
function credentials() {
  return session.key || !session.user ? 'omit' : 'same-origin';
}

async function parse(r) {
  const text = await r.text();
  try { return text ? JSON.parse(text) : null; } catch { return null; }
}

/** A JSON call. `key` overrides the stored key (sign-in checks a key before keeping it). */
export async function api(method, path, body, { signal, key } = {}) {
  const headers = key ? { Authorization: `Bearer ${key}` } : authHeaders(method);
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let r;
  try {
    r = await fetch(path, {
      method, headers, signal, cache: 'no-store', credentials: key ? 'omit' : credentials(),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    if (e && e.name === 'AbortError') throw e;
    throw new ApiError(0, null);
  }
  const data = await parse(r);
  if (!r.ok) {
    const err = new ApiError(r.status, data);
    if (!key) refused(err);
    throw err;
  }
  return data;
}

/**
 * POST /v1/chat/completions with `stream: true`; `onChunk` gets each parsed SSE chunk.
 * Aborting `signal` closes the connection, which makes the daemon cancel the generation.
 */
export async function streamChat(body, signal, onChunk) {
  let r;
  try {
    r = await fetch('/v1/chat/completions', {
      method: 'POST', signal, cache: 'no-store', credentials: credentials(),
      headers: authHeaders('POST', { 'Content-Type': 'application/json', Accept: 'text/event-stream' }),
      body: JSON.stringify({ ...body, stream: true }),
    });
  } catch (e) {
    if (e && e.name === 'AbortError') throw e;
    throw new ApiError(0, null);
  }
  if (!r.ok) {
    const err = new ApiError(r.status, await parse(r));
    refused(err);
    throw err;
  }
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value;
    // Events end with a blank line; keep the unfinished tail for the next read.
    const events = buf.split(/\r?\n\r?\n/);
    buf = events.pop();
    for (const ev of events) {
      const data = ev.split(/\r?\n/)
        .filter((l) => l.startsWith('data:'))
        .map((l) => l.slice(5).replace(/^ /, ''))
        .join('\n');
      if (!data) continue;
      if (data === '[DONE]') return;
      let chunk;
      try { chunk = JSON.parse(data); } catch { continue; }
      if (chunk.error) throw new ApiError(500, chunk);
      onChunk(chunk);
    }
  }
}

/**
 * Upload one file as the raw request body with upload progress (fetch has none).
 * `onProgress(fraction)` runs while bytes go out; resolves with the JSON answer.
 */
export function upload(path, file, contentType, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', path);
    for (const [k, v] of Object.entries(authHeaders('POST'))) xhr.setRequestHeader(k, v);
    xhr.setRequestHeader('Content-Type', contentType);
    xhr.responseType = 'text';
    xhr.upload.addEventListener('progress', (e) => {
      if (e.lengthComputable && e.total > 0) onProgress(e.loaded / e.total);
    });
    xhr.addEventListener('load', () => {
      let data = null;
      try { data = xhr.responseText ? JSON.parse(xhr.responseText) : null; } catch { data = null; }
      if (xhr.status >= 200 && xhr.status < 300) resolve(data);
      else {
        const err = new ApiError(xhr.status, data);
        refused(err);
        reject(err);
      }
    });
    xhr.addEventListener('error', () => reject(new ApiError(0, null)));
    xhr.addEventListener('abort', () => reject(new ApiError(0, null)));
    xhr.send(file);
  });
}

/** Directory sign-in: `{user, scopes, group, expires_at, csrf_token}`; the answer sets the
 * session cookie. Errors as for `api`. */
export async function directoryLogin(username, password) {
  let r;
  try {
    r = await fetch('/v1/auth/login', {
      method: 'POST', cache: 'no-store', credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ username, password }),
    });
  } catch {
    throw new ApiError(0, null);
  }
  const data = await parse(r);
  if (!r.ok) throw new ApiError(r.status, data);
  session.setUser(data.user, data.csrf_token);
  return data;
}

/** After a reload: the directory session of the cookie, and its CSRF token, if still open. */
export async function resumeDirectory() {
  const data = await api('GET', '/v1/auth/session');
  if (data.method !== 'session') throw new ApiError(401, null);
  session.setUser(data.user, data.csrf_token);
  return data;
}

/** Close the directory session (the daemon clears the cookie); errors are of no use here. */
export async function directoryLogout() {
  try {
    await fetch('/v1/auth/logout', {
      method: 'POST', cache: 'no-store', credentials: 'same-origin', headers: authHeaders('POST'),
    });
  } catch { /* signed out locally all the same */ }
}

/** Whether the sign-in page offers directory accounts (`[auth.ldap]`). */
export async function directoryOffered() {
  try {
    const r = await fetch('/v1/auth/methods', { cache: 'no-store', credentials: 'omit' });
    return r.ok && Boolean((await r.json()).directory);
  } catch {
    return false;
  }
}
