// The Models page in the browser console, against the real daemon serving both fixture models
// (Qwen2 and Llama): the table is GET /v1/admin/models (state, provider, context, memory,
// default and pinned), Unload asks first and then the daemon really stops serving the model
// (a chat for it gets 404), Load by name brings it back (a chat answers again), Pin makes the
// daemon refuse an unload and the page shows that refusal as the daemon words it; the budget
// line is the daemon's; hidden for a chat-only key; phone layout in Chinese.
//
// Screenshots go to tests/console/artifacts/ (git-ignored).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { Daemon, browser, watch, shot, MODEL, MODEL_DIR, ROOT } from './harness.mjs';

const LLAMA_DIR = path.join(ROOT, 'tests', 'fixtures', 'tiny-llama-genai');
const LLAMA = path.basename(LLAMA_DIR);

let d;
let b;
let adminKey;
let chatKey;

async function listed() {
  const r = await d.json('GET', '/v1/admin/models', { key: adminKey });
  assert.equal(r.status, 200, JSON.stringify(r.json));
  return r.json;
}

async function chatStatus(model) {
  const r = await d.json('POST', '/v1/chat/completions', {
    key: chatKey, body: { model, max_tokens: 4, messages: [{ role: 'user', content: 'hi' }] },
  });
  return r.status;
}

async function signIn(p, key) {
  await p.fill('#key', key);
  await p.locator('form.signin button[type="submit"]').click();
}

const row = (p, model) => p.locator(`tr.model-row[data-model="${model}"]`);

before(async () => {
  d = await Daemon.start({ model: [MODEL_DIR, LLAMA_DIR], config: '[engine]\nkv_budget_mb = 64\nprefix_cache_mb = 0\nmemory_budget_mb = 1000\n' });
  adminKey = d.key('models-admin', 'admin');
  chatKey = d.key('models-chat', 'chat');
  const deadline = Date.now() + 60_000;
  while ((await listed()).data.some((m) => m.state !== 'ready')) {
    if (Date.now() > deadline) throw new Error(`models not ready: ${d.logs()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  b = await browser();
});

after(async () => {
  await b?.close();
  await d?.stop();
});

test('the Models page shows what the daemon serves; unload, load and pin act on the daemon', async () => {
  const page = await b.context.newPage();
  const problems = watch(page);
  await page.goto(`${d.url}/#/models`);
  await signIn(page, adminKey);
  await row(page, LLAMA).waitFor();
  const api = await listed();
  // One row per model, in the daemon's order, each with its state, provider and memory.
  assert.deepEqual(await page.locator('tr.model-row').evaluateAll((rs) => rs.map((r) => [r.dataset.model, r.dataset.state])),
    api.data.map((m) => [m.id, m.state]));
  for (const m of api.data) {
    const text = await row(page, m.id).textContent();
    assert.match(text, /Ready/);
    assert.match(text, /cpu/);
    assert.match(text, new RegExp(`${Math.ceil(m.memory_bytes / 2 ** 20).toLocaleString('en-US')} MiB`));
    assert.match(text, new RegExp(m.context_length.toLocaleString('en-US')));
  }
  assert.match(await row(page, MODEL).textContent(), /default/);
  assert.doesNotMatch(await row(page, LLAMA).textContent(), /default/);
  const used = Math.ceil(api.memory_used_bytes / 2 ** 20).toLocaleString('en-US');
  assert.equal(await page.locator('.models-budget').textContent(), ` ${used} of 1,000 MiB of the memory budget in use`);
  await shot(page, 'models-desktop');

  // Unload: a confirmation first; Cancel keeps it, Unload stops it on the daemon.
  await row(page, LLAMA).locator('button', { hasText: 'Unload' }).click();
  await page.locator('dialog.confirm', { hasText: LLAMA }).waitFor();
  await page.locator('dialog.confirm button', { hasText: 'Cancel' }).click();
  assert.equal(await chatStatus(LLAMA), 200);
  await row(page, LLAMA).locator('button', { hasText: 'Unload' }).click();
  await page.locator('dialog.confirm button', { hasText: 'Unload' }).click();
  await page.locator(`tr.model-row[data-model="${LLAMA}"][data-state="unloaded"]`).waitFor();
  assert.equal(await chatStatus(LLAMA), 404);
  assert.equal((await listed()).data.find((m) => m.id === LLAMA).state, 'unloaded');
  // The chat's model picker offers only models that serve.
  const chat = await b.context.newPage();
  await chat.goto(`${d.url}/`);
  await signIn(chat, chatKey);
  await chat.locator(`.chat select option[value="${MODEL}"]`).waitFor({ state: 'attached' });
  const offered = await chat.locator('.chat select option').evaluateAll((os) => os.map((o) => o.value));
  assert.ok(offered.includes(MODEL) && !offered.includes(LLAMA), JSON.stringify(offered));
  await chat.close();

  // Load by name from the form: it serves again.
  await page.fill('.models-load [name="model"]', LLAMA);
  await page.locator('.models-load button[type="submit"]').click();
  await page.locator(`tr.model-row[data-model="${LLAMA}"][data-state="ready"]`).waitFor();
  assert.equal(await chatStatus(LLAMA), 200);

  // Pin: the daemon then refuses the unload, and the page says what the daemon said.
  await row(page, LLAMA).locator('button', { hasText: 'Pin' }).click();
  await row(page, LLAMA).locator('.badge.pinned').waitFor();
  assert.equal((await listed()).data.find((m) => m.id === LLAMA).pinned, true);
  await row(page, LLAMA).locator('button', { hasText: 'Unload' }).click();
  await page.locator('dialog.confirm button', { hasText: 'Unload' }).click();
  await page.locator('.models .formmsg.error').waitFor();
  assert.match(await page.locator('.models .formmsg').textContent(), /pinned; unpin it first/);
  assert.equal(await chatStatus(LLAMA), 200);
  await row(page, LLAMA).locator('button', { hasText: 'Unpin' }).click();
  await row(page, LLAMA).locator('button', { hasText: 'Pin' }).waitFor();
  assert.equal((await listed()).data.find((m) => m.id === LLAMA).pinned, false);

  // A directory that is not there: the daemon's 404, as text.
  await page.fill('.models-load [name="model"]', '/no/such/<b>dir</b>');
  await page.locator('.models-load button[type="submit"]').click();
  await page.locator('.models .formmsg.error', { hasText: 'no model' }).waitFor();
  assert.equal(await page.locator('.models b').count(), 0);
  assert.deepEqual(problems, []);
  await page.close();
});

test('a chat-only key has no Models page', async () => {
  const page = await b.context.newPage();
  await page.goto(`${d.url}/#/models`);
  await signIn(page, chatKey);
  await page.locator('.chat').waitFor();
  assert.equal(await page.locator('nav a[data-route="models"]').isVisible(), false);
  assert.equal(await page.locator('.models').count(), 0);
  await page.close();
});

test('phone layout and the Chinese UI', async () => {
  const phone = await browser({ locale: 'zh-CN', viewport: { width: 375, height: 740 } });
  try {
    const page = await phone.context.newPage();
    await page.goto(`${d.url}/#/models`);
    await signIn(page, adminKey);
    await row(page, MODEL).waitFor();
    assert.equal(await page.locator('#models-h').textContent(), '模型');
    assert.match(await row(page, MODEL).textContent(), /就绪/);
    const [w, cw] = await page.evaluate(() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]);
    assert.ok(w <= cw, `page scrolls sideways: ${w} > ${cw}`);
    const unnamed = await page.locator('.models input, .models button').evaluateAll((els) => els
      .filter((e) => !(e.textContent.trim() || e.getAttribute('aria-label') || (e.id && document.querySelector(`label[for="${e.id}"]`))))
      .map((e) => e.outerHTML.slice(0, 80)));
    assert.deepEqual(unnamed, []);
    await shot(page, 'models-phone-zh');
  } finally {
    await phone.close();
  }
});
