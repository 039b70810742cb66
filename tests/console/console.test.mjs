// The browser console against the real daemon on the tiny fixture model, in Debian's chromium:
// serving and headers, sign-in, streamed chat with the thinking panel, copy / regenerate, IME
// input, HTML injection, stop → server-side cancellation, IndexedDB persistence, the admin page
// (status, chart, keys), a tablet-sized Chinese UI, and sign-out on revocation.
//
// Screenshots of each main screen go to tests/console/artifacts/ (git-ignored).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { Daemon, browser, watch, shot, load, banEos, MODEL, ROOMY, ROOT } from './harness.mjs';

let d;
let adminKey;
let b;
let page;
let problems;
const consoleUrls = new Set();

const assistantCount = () => page.locator('.msg.assistant').count();
const lastAssistant = () => page.locator('.msg.assistant').last();

/** Wait until no generation is running (the Send button is back). */
async function idle(timeout = 60_000) {
  await page.locator('.composer .send').waitFor({ state: 'visible', timeout });
}

/** Everything the page keeps in IndexedDB. */
function conversations() {
  return page.evaluate(async () => {
    const db = await new Promise((resolve, reject) => {
      const q = indexedDB.open('edgeseek-console');
      q.onsuccess = () => resolve(q.result);
      q.onerror = () => reject(q.error);
    });
    return new Promise((resolve) => {
      const q = db.transaction('conversations').objectStore('conversations').getAll();
      q.onsuccess = () => resolve(q.result);
    });
  });
}

async function setSetting(name, value) {
  const btn = page.locator('.toolbar button', { hasText: 'Settings' });
  if ((await btn.getAttribute('aria-expanded')) !== 'true') await btn.click();
  await page.fill(`.settings [name="${name}"]`, value);
}

async function closeSettings() {
  const btn = page.locator('.toolbar button', { hasText: 'Settings' });
  if ((await btn.getAttribute('aria-expanded')) === 'true') await btn.click();
}

async function signIn(p, key) {
  await p.fill('#key', key);
  await p.locator('form.signin button[type="submit"]').click();
}

before(async () => {
  d = await Daemon.start({ config: ROOMY });
  adminKey = d.key('console-admin', 'admin');
  b = await browser();
  await b.context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: d.url });
  page = await b.context.newPage();
  problems = watch(page);
  await banEos(page);
  page.on('response', (r) => {
    const u = new URL(r.url());
    if (u.pathname === '/' || u.pathname.startsWith('/console/')) consoleUrls.add(u.pathname);
  });
});

after(async () => {
  await b?.close();
  await d?.stop();
});

test('every UI text exists in English and in Chinese', () => {
  const dir = path.join(ROOT, 'daemon', 'console');
  const src = fs.readFileSync(path.join(dir, 'i18n.js'), 'utf8');
  const keys = (block) => new Set([...block.matchAll(/^\s*'([\w.]+)':/gm)].map((m) => m[1]));
  const en = keys(src.slice(src.indexOf('const en = {'), src.indexOf('const zh = {')));
  const zh = keys(src.slice(src.indexOf('const zh = {'), src.indexOf('const langs')));
  assert.ok(en.size > 100);
  assert.deepEqual([...en].filter((k) => !zh.has(k)), []);
  assert.deepEqual([...zh].filter((k) => !en.has(k)), []);
  const used = new Set();
  for (const f of fs.readdirSync(dir).filter((n) => n.endsWith('.js'))) {
    for (const m of fs.readFileSync(path.join(dir, f), 'utf8').matchAll(/\bt\('([\w.]+)'/g)) used.add(m[1]);
  }
  assert.deepEqual([...used].filter((k) => !en.has(k)), []);
});

test('the daemon serves the console compressed, cacheable and with a strict policy', async () => {
  const r = await d.request('GET', '/', { headers: { 'Accept-Encoding': 'gzip, deflate, br' } });
  assert.equal(r.status, 200);
  assert.equal(r.headers['content-encoding'], 'gzip');
  assert.match(r.headers['content-type'], /^text\/html/);
  const html = zlib.gunzipSync(r.body).toString('utf8');
  assert.match(html, /<script type="module" src="\/console\/app.js"><\/script>/);
  const csp = r.headers['content-security-policy'];
  for (const part of ["default-src 'self'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'", "object-src 'none'"]) {
    assert.ok(csp.includes(part), `${part} in ${csp}`);
  }
  assert.ok(!csp.includes('unsafe-inline') && !csp.includes('unsafe-eval'), csp);
  assert.equal(r.headers['x-content-type-options'], 'nosniff');
  assert.equal(r.headers['referrer-policy'], 'no-referrer');
  assert.equal(r.headers['x-frame-options'], 'DENY');
  assert.equal(r.headers['cache-control'], 'no-cache');
  assert.match(r.headers.vary, /Accept-Encoding/i);
  const etag = r.headers.etag;
  assert.match(etag, /^"[0-9a-f]+-gz"$/);

  // Revalidation: a matching ETag is a 304 without a body.
  const again = await d.request('GET', '/', { headers: { 'Accept-Encoding': 'gzip', 'If-None-Match': etag } });
  assert.equal(again.status, 304);
  assert.equal(again.body.length, 0);
  assert.equal(again.headers.etag, etag);

  // Without gzip the same file comes as is, under its own tag.
  const plain = await d.request('GET', '/console/app.js');
  assert.equal(plain.status, 200);
  assert.equal(plain.headers['content-encoding'], undefined);
  assert.match(plain.headers['content-type'], /^text\/javascript/);
  assert.notEqual(plain.headers.etag, etag);
  assert.match(plain.body.toString('utf8'), /import /);

  for (const p of ['/console/nope.js', '/console/index.html', '/console/%2e%2e/openapi.json', '/index.html']) {
    assert.equal((await d.request('GET', p)).status, 404, p);
  }
  // The API keeps its routes and gets the basic headers too, with a deny-all policy.
  const health = await d.request('GET', '/healthz');
  assert.equal(health.status, 200);
  assert.equal(health.headers['x-content-type-options'], 'nosniff');
  assert.equal(health.headers['x-frame-options'], 'DENY');
  assert.match(health.headers['content-security-policy'], /default-src 'none'/);
  const models = await d.json('GET', '/v1/models', { key: adminKey });
  assert.equal(models.json.data[0].id, MODEL);
});

test('admin HTTP API: admin scope, validation, OpenAI-style errors, key round trip', async () => {
  const chat = d.key('api-chat', 'chat');
  const none = await d.json('GET', '/v1/admin/status');
  assert.equal(none.status, 401);
  assert.equal(none.json.error.type, 'authentication_error');
  const denied = await d.json('GET', '/v1/admin/keys', { key: chat });
  assert.equal(denied.status, 403);
  assert.equal(denied.json.error.code, 'insufficient_scope');
  assert.match(denied.json.error.message, /admin/);
  for (const p of ['/v1/admin/status', '/v1/admin/metrics/history']) {
    assert.equal((await d.json('GET', p, { key: chat })).status, 403, p);
  }

  const list = await d.json('GET', '/v1/admin/keys', { key: adminKey });
  assert.equal(list.status, 200);
  assert.ok(list.json.data.some((k) => k.name === 'console-admin' && k.scopes.includes('admin')));
  assert.ok(!JSON.stringify(list.json).match(/secret|sha256|es-[0-9a-f]{64}/), 'no secrets or hashes listed');

  const bad = async (body, param, code = 'invalid_value') => {
    const r = await d.json('POST', '/v1/admin/keys', { key: adminKey, body });
    assert.equal(r.status, 400, JSON.stringify(body));
    assert.equal(r.json.error.param, param);
    assert.equal(r.json.error.code, code);
  };
  await bad({ name: 'x', scopes: ['chat'], admin: true }, 'admin', 'unknown_parameter');
  await bad({ name: 'x', scopes: ['root'] }, 'scopes');
  await bad({ name: 'x', scopes: [] }, 'scopes');
  await bad({ name: 'no spaces', scopes: ['chat'] }, 'name');
  await bad({ name: 'x', scopes: ['chat'], rpm: 0 }, 'rpm');
  const form = await d.request('POST', '/v1/admin/keys', { key: adminKey, body: Buffer.from('name=x'), headers: { 'Content-Type': 'application/x-www-form-urlencoded' } });
  assert.equal(form.status, 400);

  const made = await d.json('POST', '/v1/admin/keys', { key: adminKey, body: { name: 'api-made', scopes: ['chat', 'kb:read:hr'], rpm: 30, tpm: null } });
  assert.equal(made.status, 201);
  assert.equal(made.headers['cache-control'], 'no-store');
  assert.match(made.json.secret, /^es-[0-9a-f]{64}$/);
  assert.deepEqual(made.json.scopes, ['chat', 'kb:read:hr']);
  assert.equal(made.json.rpm, 30);
  assert.equal((await d.request('GET', '/v1/models', { key: made.json.secret })).status, 200);
  const dup = await d.json('POST', '/v1/admin/keys', { key: adminKey, body: { name: 'api-made', scopes: ['chat'] } });
  assert.equal(dup.status, 409);
  assert.equal(dup.json.error.code, 'name_taken');

  const gone = await d.json('DELETE', `/v1/admin/keys/${made.json.id}`, { key: adminKey });
  assert.equal(gone.status, 200);
  assert.equal(gone.json.revoked, true);
  assert.equal((await d.request('GET', '/v1/models', { key: made.json.secret })).status, 401);
  assert.equal((await d.json('DELETE', `/v1/admin/keys/${made.json.id}`, { key: adminKey })).json.error.code, 'already_revoked');
  assert.equal((await d.json('DELETE', '/v1/admin/keys/ffffffffffff', { key: adminKey })).status, 404);
  const put = await d.request('PUT', '/v1/admin/keys', { key: adminKey });
  assert.equal(put.status, 405);
  assert.equal(put.headers.allow, 'GET, POST');

  const hist = await d.json('GET', '/v1/admin/metrics/history', { key: adminKey });
  assert.equal(hist.json.interval_s, 5);
  assert.equal(hist.json.capacity, 180);
  const st = await d.json('GET', '/v1/admin/status', { key: adminKey });
  assert.equal(st.json.model, MODEL);
  assert.equal(st.json.ready, true);
  assert.equal(st.json.provider, 'cpu');
  assert.equal(st.json.tls.fingerprint_sha256, d.fingerprint);
  assert.match(st.json.tls.not_after, /^\d{4}-\d\d-\d\dT/);
  for (const k of ['queue_depth', 'active_sequences', 'tokens_per_s', 'cancellations', 'uptime_s', 'version', 'sample_interval_s']) {
    assert.ok(k in st.json, k);
  }
});

test('sign in: a wrong key gets a clear message, the right key opens the chat', async () => {
  await page.goto(`${d.url}/`);
  await signIn(page, `es-${'0'.repeat(64)}`);
  await page.locator('#signin-msg.error').waitFor();
  assert.match(await page.locator('#signin-msg').textContent(), /not accepted: it is unknown or has been revoked/);
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);
  await shot(page, 'signin-wrong-key');

  await signIn(page, adminKey);
  await page.locator('.chat').waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.getItem('edgeseek.key')), adminKey);
  assert.ok(!page.url().includes(adminKey), 'the key is never in a URL');
  assert.equal(await page.locator('#key').count(), 0);
  // An admin key sees the admin page in the navigation.
  await page.locator('nav.tabs a[data-route="admin"]').waitFor({ state: 'visible' });
  assert.equal(await page.locator('.toolbar select').inputValue(), MODEL);
});

test('a message streams an answer; the thinking panel is open while the model reasons, then closes', async () => {
  // The fixture's R1 template opens <think>: without a budget everything is reasoning. A small
  // thinking budget closes it so an answer follows; a background load keeps the batch full so
  // the stream lasts long enough to watch.
  await setSetting('max_tokens', '200');
  await setSetting('max_reasoning_tokens', '12');
  await closeSettings();
  const hog = await load(d, adminKey);
  // Sample, every frame, how much text the newest answer shows and whether Stop is offered.
  await page.evaluate(() => {
    window.lens = [];
    window.stopShown = false;
    window.openWhileThinking = [];
    const tick = () => {
      const m = [...document.querySelectorAll('.msg.assistant')].pop();
      if (m) {
        const n = m.querySelector('.thinking-body').textContent.length + m.querySelector('.answer').textContent.length;
        window.lens.push(n);
        if (n > 0 && !document.querySelector('.composer .stop').hidden) window.stopShown = true;
        // While only reasoning has arrived, the panel is open: the user watches it think.
        if (m.querySelector('.thinking-body').textContent && !m.querySelector('.answer').textContent) {
          window.openWhileThinking.push(m.querySelector('details.thinking').open);
        }
      }
      if (!window.stopLens) requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
  });
  const sse = page.waitForResponse((r) => r.url().endsWith('/v1/chat/completions'));
  await page.fill('.composer textarea', 'Hello there');
  await page.keyboard.press('Enter');
  assert.match((await sse).headers()['content-type'], /^text\/event-stream/);
  await idle();
  await hog.done;
  const [lens, stopShown, openWhileThinking] = await page.evaluate(() => {
    window.stopLens = true;
    return [window.lens, window.stopShown, window.openWhileThinking];
  });
  assert.ok(openWhileThinking.length > 0 && openWhileThinking.every(Boolean),
    `the thinking panel was open while the model reasoned: ${openWhileThinking}`);
  const distinct = new Set(lens.filter((n) => n > 0));
  assert.ok(distinct.size >= 3, `text arrived in pieces: ${[...distinct].join(',')}`);
  assert.ok(stopShown, 'Stop was offered while the answer streamed');

  const msg = lastAssistant();
  const reasoning = await msg.locator('.thinking-body').textContent();
  const answer = await msg.locator('.answer').textContent();
  assert.ok(reasoning.length > 0, 'reasoning_content fills the thinking panel');
  assert.ok(answer.length > 0, 'the answer follows the closed thinking block');
  assert.equal(await msg.locator('details.thinking').evaluate((e) => e.open), false);
  assert.equal(await msg.locator('.thinking-body').isVisible(), false);
  assert.match(await msg.locator('.thinking summary').textContent(), /Thought for \d+ s/);
  await msg.locator('.thinking summary').click();
  assert.equal(await msg.locator('details.thinking').evaluate((e) => e.open), true);
  assert.equal(await msg.locator('.thinking-body').isVisible(), true);
  assert.equal(await page.locator('.msg.user .bubble').last().textContent(), 'Hello there');

  // What the page showed is what it stored.
  const [conv] = await conversations();
  const stored = conv.messages[conv.messages.length - 1];
  assert.equal(stored.reasoning, reasoning);
  assert.equal(conv.title, 'Hello there');
  await shot(page, 'chat-thinking-open');
});

test('copy puts the answer on the clipboard; regenerate replaces the last answer', async () => {
  const [before] = await conversations();
  const content = before.messages[before.messages.length - 1].content;
  await lastAssistant().locator('.actions button', { hasText: 'Copy' }).click();
  await page.locator('.toast-item', { hasText: 'Copied' }).waitFor();
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), content);

  let requests = 0;
  const count = (r) => { if (r.url().endsWith('/v1/chat/completions')) requests += 1; };
  page.on('request', count);
  const n = await assistantCount();
  await lastAssistant().locator('.actions button', { hasText: 'Regenerate' }).click();
  await page.locator('.composer .stop').waitFor({ state: 'visible' }).catch(() => {});
  await idle();
  page.off('request', count);
  assert.equal(requests, 1);
  assert.equal(await assistantCount(), n, 'the answer is replaced, not added');
  const [after] = await conversations();
  assert.equal(after.messages.length, before.messages.length);
  assert.equal(after.messages.filter((m) => m.role === 'user').length, 1);
});

test('Enter while an IME is composing does not send; after commit it does', async () => {
  const box = page.locator('.composer textarea');
  await box.fill('ni');
  const users = await page.locator('.msg.user').count();
  // What browsers fire when Enter picks an IME candidate.
  for (const init of [{ isComposing: true }, { keyCode: 229 }]) {
    const leftToIme = await box.evaluate((el, i) => {
      const ev = new KeyboardEvent('keydown', { key: 'Enter', code: 'Enter', bubbles: true, cancelable: true, ...i });
      return el.dispatchEvent(ev) && !ev.defaultPrevented;
    }, init);
    assert.equal(leftToIme, true, `keydown ${JSON.stringify(init)} was left to the IME`);
    assert.equal(await page.locator('.msg.user').count(), users);
  }
  // A real composition through the browser's input method machinery.
  const cdp = await page.context().newCDPSession(page);
  await box.fill('');
  await box.focus();
  await cdp.send('Input.imeSetComposition', { text: 'nihao', selectionStart: 5, selectionEnd: 5 });
  await cdp.send('Input.dispatchKeyEvent', { type: 'rawKeyDown', key: 'Enter', code: 'Enter', windowsVirtualKeyCode: 229, nativeVirtualKeyCode: 229 });
  await cdp.send('Input.insertText', { text: '你好' });
  await page.waitForTimeout(200);
  assert.equal(await page.locator('.msg.user').count(), users, 'nothing was sent while composing');
  assert.equal(await box.inputValue(), '你好');
  await page.keyboard.press('Enter');
  await page.locator('.msg.user').nth(users).waitFor();
  assert.equal(await page.locator('.msg.user .bubble').last().textContent(), '你好');
  assert.equal(await box.inputValue(), '');
  await idle();
});

test('HTML in messages and Markdown renders as text, never as elements', async () => {
  const attack = '<img src=x onerror=alert(1)> <script>alert(2)</script> [x](javascript:alert(3))';
  await page.fill('.composer textarea', attack);
  await page.keyboard.press('Enter');
  await page.locator('.msg.user .bubble', { hasText: '<img src=x' }).waitFor();
  await idle();
  assert.equal(await page.locator('.msg.user .bubble').last().textContent(), attack);
  assert.equal(await page.locator('.messages img, .messages script').count(), 0);

  // The Markdown renderer on hostile and ordinary input, in the page itself.
  const out = await page.evaluate(async () => {
    const { renderMarkdown } = await import('/console/markdown.js');
    const src = [
      '# Title', '', 'Some **bold**, *italic*, `code` and a [link](https://example.test/a) [1] [2].',
      '', '<img src=x onerror=alert(1)>', '', '[bad](javascript:alert(1)) [data](data:text/html,hi)',
      '', '```html', '</code></pre><script>alert(1)</script>', '```', '', '- one', '- two', '  - nested',
      '', '| a | b |', '|---|--:|', '| <b>x</b> | 2 |', '', '> quote <iframe src=x>',
    ].join('\n');
    let cited = null;
    const box = document.createElement('div');
    box.append(renderMarkdown(src, { citations: [{ index: 1, filename: 'a.md' }], onCite: (c) => { cited = c; } }));
    box.querySelector('button.cite').click();
    const tags = new Set([...box.querySelectorAll('*')].map((e) => e.tagName.toLowerCase()));
    const attrs = [...box.querySelectorAll('*')].flatMap((e) => [...e.attributes].map((a) => a.name));
    return {
      tags: [...tags], attrs: [...new Set(attrs)], text: box.textContent,
      hrefs: [...box.querySelectorAll('a')].map((a) => a.getAttribute('href')),
      code: box.querySelector('pre code').textContent, cited: cited && cited.filename,
      cites: box.querySelectorAll('button.cite').length,
    };
  });
  for (const bad of ['img', 'script', 'iframe', 'b', 'style']) assert.ok(!out.tags.includes(bad), `no <${bad}>: ${out.tags}`);
  for (const good of ['h3', 'strong', 'em', 'code', 'pre', 'a', 'ul', 'li', 'table', 'blockquote']) assert.ok(out.tags.includes(good), `<${good}> rendered: ${out.tags}`);
  assert.ok(out.attrs.every((a) => !a.startsWith('on') && a !== 'style' && a !== 'src'), `attributes: ${out.attrs}`);
  assert.deepEqual(out.hrefs, ['https://example.test/a']);
  assert.ok(out.text.includes('<img src=x onerror=alert(1)>'));
  assert.ok(out.text.includes('[bad](javascript:alert(1))'));
  assert.equal(out.code, '</code></pre><script>alert(1)</script>');
  assert.equal(out.cites, 1, '[1] has a citation, [2] does not');
  assert.equal(out.cited, 'a.md');
});

test('Stop aborts the stream mid-answer and the server cancels the generation', async () => {
  await setSetting('max_tokens', '');
  await setSetting('max_reasoning_tokens', '');
  await closeSettings();
  const cancelled = await d.metric('edgeseek_cancellations_total');
  const disconnects = await d.metric('edgeseek_client_disconnects_total');
  await page.locator('.convs-head button', { hasText: 'New chat' }).click();
  const hog = await load(d, adminKey);
  await page.fill('.composer textarea', 'Tell me a long story');
  await page.keyboard.press('Enter');
  const msg = lastAssistant();
  // Stop once text is streaming in.
  await page.waitForFunction(() => {
    const m = [...document.querySelectorAll('.msg.assistant')].pop();
    return m && m.querySelector('.thinking-body').textContent.length + m.querySelector('.answer').textContent.length > 0;
  });
  await page.locator('.composer .stop').click();
  await idle(5000);
  assert.equal(await msg.locator('.status').textContent(), 'Stopped.');
  const partial = (await msg.locator('.thinking-body').textContent()) + (await msg.locator('.answer').textContent());
  assert.ok(partial.length > 0, 'the partial answer stays');
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline && (await d.metric('edgeseek_cancellations_total')) <= cancelled) {
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.ok((await d.metric('edgeseek_cancellations_total')) > cancelled, 'the daemon cancelled the generation');
  assert.ok((await d.metric('edgeseek_client_disconnects_total')) > disconnects);
  const r = await hog.done;
  assert.equal(r.status, 200);
  assert.ok(r.body.toString('utf8').trimEnd().endsWith('data: [DONE]'), 'the other stream ran to its end');
  const convs = await conversations();
  const stored = convs.find((c) => c.title === 'Tell me a long story');
  assert.equal(stored.messages[1].stopped, true);
  await shot(page, 'chat-stopped');
});

test('conversations are kept in IndexedDB across a reload', async () => {
  const titles = (await conversations()).map((c) => c.title).sort();
  assert.ok(titles.length >= 2, titles.join(','));
  await page.reload();
  await page.locator('.conv-list .conv').first().waitFor();
  const shown = (await page.locator('.conv-list .conv').allTextContents()).sort();
  assert.deepEqual(shown, titles);
  await page.locator('.conv-list .conv', { hasText: 'Hello there' }).click();
  await page.locator('.msg.user .bubble', { hasText: 'Hello there' }).waitFor();
  assert.ok((await assistantCount()) >= 1);
});

test('admin: status and chart from the daemon; a key is shown once, works, and is revoked', async () => {
  await page.locator('nav.tabs a[data-route="admin"]').click();
  await page.locator('.cards .stat').first().waitFor();
  const cards = await page.locator('.cards').textContent();
  assert.ok(cards.includes(MODEL) && cards.includes('cpu') && cards.includes('ready'), cards);
  assert.equal(await page.locator('.fingerprint').textContent(), d.fingerprint);
  // The history endpoint has samples (every 5 s) with the tokens generated so far.
  let hist;
  const deadline = Date.now() + 20_000;
  do {
    hist = (await d.json('GET', '/v1/admin/metrics/history', { key: adminKey })).json;
    if (hist.data.length >= 2 && hist.data.some((s) => s.tokens_per_s > 0)) break;
    await new Promise((r) => setTimeout(r, 500));
  } while (Date.now() < deadline);
  assert.equal(hist.interval_s, 5);
  assert.ok(hist.data.some((s) => s.tokens_per_s > 0), JSON.stringify(hist.data));
  await page.waitForFunction(() => Number(document.querySelector('canvas.chart').dataset.points) >= 2, null, { timeout: 15_000 });
  const status = (await d.json('GET', '/v1/admin/status', { key: adminKey })).json;
  assert.equal(status.tls.fingerprint_sha256, d.fingerprint);
  assert.equal(typeof status.cancellations, 'number');
  assert.equal(typeof status.version, 'string');
  await shot(page, 'admin');

  // Create: the secret appears once, with a copy button.
  await page.fill('.key-form [name="name"]', 'tablet-1');
  await page.locator('.key-form button[type="submit"]').click();
  const secret = (await page.locator('.secret-value').textContent()).trim();
  assert.match(secret, /^es-[0-9a-f]{64}$/);
  await shot(page, 'admin-key-created');
  await page.locator('.secret button', { hasText: 'Copy' }).click();
  await page.locator('.toast-item', { hasText: 'Copied' }).last().waitFor();
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), secret);
  assert.equal((await d.request('GET', '/v1/models', { key: secret })).status, 200);
  await page.locator('.keys tr', { hasText: 'tablet-1' }).waitFor();
  await page.locator('.secret button', { hasText: 'Done' }).click();
  assert.equal(await page.locator('.secret-value').count(), 0);
  await page.reload();
  await page.locator('.keys tr', { hasText: 'tablet-1' }).waitFor();
  assert.ok(!(await page.content()).includes(secret), 'the secret is never shown again');

  // A duplicate name is refused with the daemon's message.
  await page.fill('.key-form [name="name"]', 'tablet-1');
  await page.locator('.key-form button[type="submit"]').click();
  await page.locator('.key-form .formmsg.error').waitFor();
  assert.match(await page.locator('.key-form .formmsg').textContent(), /already exists/);

  // Revoke through the confirmation dialog; the daemon refuses the key at once.
  await page.locator('.keys tr', { hasText: 'tablet-1' }).locator('button', { hasText: 'Revoke' }).click();
  await page.locator('dialog.confirm button.danger').click();
  await page.locator('.keys tr.revoked', { hasText: 'tablet-1' }).waitFor();
  assert.equal((await d.request('GET', '/v1/models', { key: secret })).status, 401);
});

/** At this page's size: no horizontal overflow, no overlapping controls, every control named. */
async function checkLayout(p, route) {
  const overflow = await p.evaluate(() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]);
  assert.ok(overflow[0] <= overflow[1], `${route}: page wider than the screen ${overflow}`);
  // No control sits on top of another (e.g. a button spilling out of a narrow sidebar).
  const overlaps = await p.evaluate(() => {
    const els = [...document.querySelectorAll('main a, main button, main input, main select, main textarea, main label, header a, header button')]
      .filter((e) => e.offsetParent !== null && !e.closest('.popover, dialog, .sr-only'));
    const boxes = els.map((e) => [e, e.getBoundingClientRect()]);
    const out = [];
    for (let i = 0; i < boxes.length; i += 1) {
      for (let j = i + 1; j < boxes.length; j += 1) {
        const [ea, a] = boxes[i];
        const [eb, b] = boxes[j];
        if (ea.contains(eb) || eb.contains(ea)) continue;
        const w = Math.min(a.right, b.right) - Math.max(a.left, b.left);
        const h = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
        if (w > 1 && h > 1) out.push(`${ea.outerHTML.slice(0, 50)} × ${eb.outerHTML.slice(0, 50)}`);
      }
    }
    return out;
  });
  assert.deepEqual(overlaps, [], `${route}: overlapping controls`);
  // Every control has an accessible name.
  const unnamed = await p.evaluate(() => [...document.querySelectorAll('button, input:not([type=hidden]):not([aria-hidden=true]), select, textarea')]
    .filter((e) => e.offsetParent !== null)
    .filter((e) => !(e.getAttribute('aria-label') || e.textContent.trim() || (e.id && document.querySelector(`label[for="${e.id}"]`)) || e.closest('label')))
    .map((e) => e.outerHTML.slice(0, 80)));
  assert.deepEqual(unnamed, [], route);
}

/** Sign in at tablet size in `locale`, visit every page, check the layout, take screenshots. */
async function tablet(locale, tag, check) {
  const t = await browser({ locale, viewport: { width: 768, height: 1024 } });
  try {
    const p = await t.context.newPage();
    const seen = watch(p);
    await p.goto(`${d.url}/`);
    await check?.signin?.(p);
    await signIn(p, adminKey);
    await p.locator('.chat').waitFor();
    await check?.signedIn?.(p);
    for (const route of ['chat', 'knowledge', 'agents', 'models', 'usage', 'audit', 'admin']) {
      await p.locator(`nav.tabs a[data-route="${route}"]`).click();
      await p.waitForTimeout(400);
      await checkLayout(p, `${tag} ${route}`);
      await shot(p, `tablet-${tag}-${route}`);
    }
    await check?.after?.(p);
    assert.deepEqual(seen, []);
  } finally {
    await t.close();
  }
}

test('tablet-sized screen in Chinese: no overflow or overlap, labelled controls, keyboard reachable', async () => {
  await tablet('zh-CN', 'zh', {
    signin: async (p) => assert.equal(await p.locator('form.signin button[type="submit"]').textContent(), '登录'),
    signedIn: async (p) => {
      assert.equal(await p.evaluate(() => document.documentElement.lang), 'zh-CN');
      assert.deepEqual(await p.locator('nav.tabs a').allTextContents(), ['对话', '知识库', '智能体', '模型', '用量', '审计', '管理']);
    },
    after: async (p) => {
      // Keyboard: from the top of the chat page, Tab reaches the message box.
      await p.locator('nav.tabs a[data-route="chat"]').click();
      await p.locator('.composer textarea').waitFor();
      await p.evaluate(() => document.activeElement.blur());
      let reached = false;
      for (let i = 0; i < 40 && !reached; i += 1) {
        await p.keyboard.press('Tab');
        reached = await p.evaluate(() => document.activeElement && document.activeElement.matches('.composer textarea'));
      }
      assert.ok(reached, 'Tab reaches the message box');
    },
  });
});

test('tablet-sized screen in English: no overflow or overlap, labelled controls', async () => {
  await tablet('en-US', 'en');
});

test('a key without the admin scope sees no admin page; revoking the signed-in key signs out', async () => {
  const chatKey = d.key('console-chat', 'chat');
  // Another key's conversation in the same browser, to see that sign-out deletes only its own.
  await page.evaluate(() => new Promise((resolve, reject) => {
    const q = indexedDB.open('edgeseek-console');
    q.onerror = () => reject(q.error);
    q.onsuccess = () => {
      const tx = q.result.transaction('conversations', 'readwrite');
      tx.objectStore('conversations').put({
        id: 'other-key-conv', owner: 'someone-else', title: 'Not mine', created: 1, updated: 1, messages: [],
      });
      tx.oncomplete = () => resolve();
      tx.onerror = () => reject(tx.error);
    };
  }));
  const before = await conversations();
  assert.ok(before.some((c) => c.owner !== 'someone-else'), 'the signed-in key has conversations');
  await page.locator('header button', { hasText: 'Sign out' }).click();
  await page.locator('#signin-msg', { hasText: 'You are signed out.' }).waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);
  // Signing out deleted the key's conversations from IndexedDB, and only those.
  assert.deepEqual((await conversations()).map((c) => c.id), ['other-key-conv']);
  await signIn(page, chatKey);
  await page.locator('.chat').waitFor();
  assert.equal(await page.locator('nav.tabs a[data-route="admin"]').isVisible(), false);
  await page.goto(`${d.url}/#/admin`);
  await page.locator('.chat').waitFor();
  assert.equal(await page.locator('.admin').count(), 0);

  // An admin revokes its own key from the admin page: the console notices and signs out.
  const selfKey = d.key('console-self', 'admin');
  await page.locator('header button', { hasText: 'Sign out' }).click();
  await signIn(page, selfKey);
  await page.locator('nav.tabs a[data-route="admin"]').click();
  const row = page.locator('.keys tr', { hasText: 'console-self' });
  await row.locator('button', { hasText: 'Revoke' }).click();
  await page.locator('dialog.confirm button.danger').click();
  await page.locator('#signin-msg', { hasText: 'no longer valid' }).waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);
  assert.equal((await d.request('GET', '/v1/models', { key: selfKey })).status, 401);
  await shot(page, 'signed-out-revoked');
});

test('first load stays small; no script errors, policy violations or dialogs', async () => {
  // Everything the session loaded, plus the knowledge page's module (loaded on first visit).
  consoleUrls.add('/console/kb.js');
  let total = 0;
  for (const p of consoleUrls) {
    const r = await d.request('GET', p, { headers: { 'Accept-Encoding': 'gzip, deflate, br' } });
    assert.equal(r.status, 200, p);
    total += r.body.length;
  }
  assert.ok(consoleUrls.has('/console/chat.js') && consoleUrls.has('/console/admin.js'), [...consoleUrls].join(' '));
  console.log(`console: ${consoleUrls.size} files, ${total} bytes compressed in all`);
  assert.ok(total < 300 * 1024, `${total} bytes`);
  assert.deepEqual(problems, []);
});
