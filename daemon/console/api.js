// Talking to the daemon: the bearer key (sessionStorage only, never in a URL), JSON calls with
// OpenAI-style errors, the SSE chat stream over fetch, uploads with progress over XHR.

import { t } from './i18n.js';

const KEY = 'edgeseek.key';

export const session = {
  get key() { return sessionStorage.getItem(KEY); },
  set(key) { sessionStorage.setItem(KEY, key); },
  clear() { sessionStorage.removeItem(KEY); },
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

function authHeaders(extra) {
  return { Authorization: `Bearer ${session.key || ''}`, ...extra };
}

async function parse(r) {
  const text = await r.text();
  try { return text ? JSON.parse(text) : null; } catch { return null; }
}

/** A JSON call. `key` overrides the stored key (sign-in checks a key before keeping it). */
export async function api(method, path, body, { signal, key } = {}) {
  const headers = key ? { Authorization: `Bearer ${key}` } : authHeaders();
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let r;
  try {
    r = await fetch(path, {
      method, headers, signal, cache: 'no-store', credentials: 'omit',
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
      method: 'POST', signal, cache: 'no-store', credentials: 'omit',
      headers: authHeaders({ 'Content-Type': 'application/json', Accept: 'text/event-stream' }),
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
    xhr.setRequestHeader('Authorization', `Bearer ${session.key || ''}`);
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
