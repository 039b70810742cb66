// The console's Audit page against the real daemon on the tiny fixture model: calls made from
// here (a chat, a refused key, keys made through the admin socket and the admin API, requests
// carrying markup) must show as the daemon's own records (GET /v1/admin/audit, read back by the
// test), newest first, with kind, status and key; the kind, key and time-range filters narrow the
// list the way the API does; a row opens to every field of its record; strings that clients
// chose stay text; the page fits a phone; keys without `admin` get no Audit page.
//
// Screenshots go to tests/console/artifacts/ (git-ignored).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Daemon, browser, watch, shot, MODEL } from './harness.mjs';

const INJECT = '<img src=x onerror=alert(1)>';

let d;
let adminKey;
let chatKey;
let chatId;
let b;
let page;
let problems;

/** The daemon's records (oldest first), as the page would ask for them. */
async function records(query = '') {
  const r = await d.json('GET', `/v1/admin/audit?limit=1000${query}`, { key: adminKey });
  assert.equal(r.status, 200, JSON.stringify(r.json));
  return r.json.data;
}

const byRequest = (list, id) => {
  const found = list.filter((r) => r.request_id === id);
  assert.equal(found.length, 1, `one record for ${id}: ${JSON.stringify(found)}`);
  return found[0];
};

/** The rows the page shows: [seq, kind, status, key name] each, top to bottom. */
async function rows(p = page) {
  return p.locator('tr.audit-row').evaluateAll((trs) => trs.map((tr) => [
    Number(tr.dataset.seq), tr.dataset.kind,
    tr.querySelector('.badge.status')?.textContent ?? null,
    tr.querySelector('.audit-keyname')?.textContent ?? null,
  ]));
}

/** Wait until the page's next load of the records has rendered (after `act`). */
async function reload(p, act) {
  const answered = p.waitForResponse((r) => r.url().includes('/v1/admin/audit?'));
  await act();
  const r = await answered;
  await p.locator('.audit-body:not([aria-busy])').waitFor();
  return new URL(r.url());
}

/** What the page shows must be the daemon's records, newest first (up to the newest shown). */
async function sameAsDaemon(query = '') {
  const shown = await rows();
  assert.ok(shown.length > 0, 'the page shows records');
  const top = shown[0][0];
  const expect = (await records(query)).filter((r) => r.seq <= top).reverse()
    .map((r) => [r.seq, r.kind, r.status === undefined ? null : String(r.status), r.key_name ?? (r.key_id ? '' : null)]);
  assert.deepEqual(shown, expect);
  return shown;
}

async function signIn(p, key, view = '.chat') {
  await p.goto(`${d.url}/`);
  await p.fill('#key', key);
  await p.locator('form.signin button[type="submit"]').click();
  await p.locator(view).first().waitFor();
}

before(async () => {
  d = await Daemon.start();
  adminKey = d.key('audit-admin', 'admin');
  chatKey = d.key('audit-chat', 'chat');
  const keys = (await d.json('GET', '/v1/admin/keys', { key: adminKey })).json.data;
  chatId = keys.find((k) => k.name === 'audit-chat').id;

  // A chat, a wrong key, a key made through the admin API, and two requests with markup in
  // what the client sent (a model name, a key name the daemon refuses).
  const chat = await d.request('POST', '/v1/chat/completions', {
    key: chatKey, headers: { 'X-Request-Id': 'audit-chat-1' },
    body: { model: MODEL, messages: [{ role: 'user', content: 'hello' }], max_tokens: 4 },
  });
  assert.equal(chat.status, 200, chat.body.toString());
  const wrong = await d.request('GET', '/v1/models', { key: 'es-not-a-key', headers: { 'X-Request-Id': 'audit-401' } });
  assert.equal(wrong.status, 401);
  const made = await d.request('POST', '/v1/admin/keys', {
    key: adminKey, headers: { 'X-Request-Id': 'audit-key-create' }, body: { name: 'audit-made', scopes: ['chat'] },
  });
  assert.equal(made.status, 201, made.body.toString());
  const badModel = await d.request('POST', '/v1/chat/completions', {
    key: chatKey, headers: { 'X-Request-Id': 'audit-inject-model' },
    body: { model: INJECT, messages: [{ role: 'user', content: 'hi' }], max_tokens: 4 },
  });
  assert.ok(badModel.status >= 400 && badModel.status < 500, `${badModel.status}`);
  const badName = await d.request('POST', '/v1/admin/keys', {
    key: adminKey, headers: { 'X-Request-Id': 'audit-inject-name' }, body: { name: INJECT, scopes: ['chat'] },
  });
  assert.equal(badName.status, 400, badName.body.toString());

  b = await browser();
  page = await b.context.newPage();
  problems = watch(page);
  await signIn(page, adminKey);
});

after(async () => {
  await b?.close();
  await d?.stop();
});

test('the Audit page lists the daemon\'s records newest first, with kind, status and key', async () => {
  await page.locator('nav.tabs a[data-route="audit"]').waitFor({ state: 'visible' });
  const url = await reload(page, () => page.locator('nav.tabs a[data-route="audit"]').click());
  assert.equal(url.searchParams.get('limit'), '200');
  // The default range is the last 24 hours.
  const since = Number(url.searchParams.get('since'));
  assert.ok(Math.abs(since - (Math.floor(Date.now() / 1000) - 86400)) < 120, `since=${since}`);
  const shown = await sameAsDaemon();
  const seqs = shown.map((r) => r[0]);
  assert.deepEqual(seqs, [...seqs].sort((x, y) => y - x), 'newest first');

  const all = await records();
  const chat = byRequest(all, 'audit-chat-1');
  const refused = byRequest(all, 'audit-401');
  const created = byRequest(all, 'audit-key-create');
  const row = (r) => page.locator(`tr.audit-row[data-seq="${r.seq}"]`);
  assert.deepEqual(shown.find((r) => r[0] === chat.seq), [chat.seq, 'api', '200', 'audit-chat']);
  assert.match(await row(chat).locator('.audit-what').textContent(), /^POST \/v1\/chat\/completions$/);
  assert.equal(await row(chat).locator('.audit-model').textContent(), MODEL);
  assert.deepEqual(shown.find((r) => r[0] === refused.seq), [refused.seq, 'auth_failure', '401', null]);
  assert.equal(await row(refused).locator('.badge.kind-auth_failure').textContent(), 'Auth failure');
  assert.deepEqual(shown.find((r) => r[0] === created.seq), [created.seq, 'api', '201', 'audit-admin']);
  assert.match(await row(created).locator('.audit-what').textContent(), /^POST \/v1\/admin\/keys$/);
  // The keys made through the admin socket are admin records naming the key.
  const socket = all.filter((r) => r.kind === 'admin' && r.action === 'keys.create').map((r) => r.target);
  assert.deepEqual(socket, ['audit-admin', 'audit-chat']);
  for (const r of all.filter((x) => x.kind === 'admin')) {
    assert.equal(await row(r).locator('.audit-what').textContent(), `${r.action} ${r.target}`);
  }

  // Status in colour: a refusal does not look like a success.
  const colour = (r) => row(r).locator('.badge.status').evaluate((e) => getComputedStyle(e).color);
  assert.ok(await row(refused).locator('.badge.status.warn').count() === 1);
  assert.ok(await row(chat).locator('.badge.status.good').count() === 1);
  assert.notEqual(await colour(refused), await colour(chat));
  await shot(page, 'audit-en');
});

test('a row opens to every field of its record', async () => {
  const chat = byRequest(await records(), 'audit-chat-1');
  const row = page.locator(`tr.audit-row[data-seq="${chat.seq}"]`);
  const toggle = row.locator('button.audit-toggle');
  const detail = page.locator(`#${await toggle.getAttribute('aria-controls')}`);
  assert.equal(await toggle.getAttribute('aria-expanded'), 'false');
  assert.equal(await detail.isVisible(), false);
  await toggle.click();
  assert.equal(await toggle.getAttribute('aria-expanded'), 'true');
  await detail.waitFor({ state: 'visible' });
  const fields = await detail.locator('dt').allTextContents();
  assert.deepEqual(fields, Object.keys(chat));
  const field = (k) => detail.locator(`dd[data-field="${k}"]`).textContent();
  assert.equal(await field('request_id'), 'audit-chat-1');
  assert.equal(await field('hash'), chat.hash);
  assert.equal(await field('prev'), chat.prev);
  assert.equal(await field('key_id'), chatId);
  assert.equal(await field('tokens_out'), String(chat.tokens_out));
  await shot(page, 'audit-en-open');
  await toggle.click();
  assert.equal(await detail.isVisible(), false);

  // The refused call's error is there too.
  const refused = byRequest(await records(), 'audit-401');
  assert.ok(refused.error, 'a 401 record has its error');
  const r2 = page.locator(`tr.audit-row[data-seq="${refused.seq}"]`);
  await r2.locator('button.audit-toggle').click();
  const d2 = page.locator(`#${await r2.locator('button.audit-toggle').getAttribute('aria-controls')}`);
  assert.equal(await d2.locator('dd[data-field="error"]').textContent(), refused.error);
  await r2.locator('button.audit-toggle').click();
});

test('strings clients chose stay text', async () => {
  const all = await records();
  const model = byRequest(all, 'audit-inject-model');
  const name = byRequest(all, 'audit-inject-name');
  // The daemon keeps what was sent: the model named, the refused key name in the error.
  assert.equal(model.model, INJECT);
  assert.ok(name.error.includes(INJECT), name.error);
  const row = page.locator(`tr.audit-row[data-seq="${model.seq}"]`);
  assert.equal(await row.locator('.audit-model').textContent(), INJECT);
  const toggle = page.locator(`tr.audit-row[data-seq="${name.seq}"] button.audit-toggle`);
  await toggle.click();
  const detail = page.locator(`#${await toggle.getAttribute('aria-controls')}`);
  assert.equal(await detail.locator('dd[data-field="error"]').textContent(), name.error);
  assert.equal(await page.locator('main img').count(), 0, 'no element made from a record');
  await toggle.click();
});

test('the kind, key and time filters narrow the list as the API does', async () => {
  const kind = page.locator('select[name="kind"]');
  let url = await reload(page, () => kind.selectOption('auth_failure'));
  assert.equal(url.searchParams.get('kind'), 'auth_failure');
  let shown = await sameAsDaemon(`&kind=auth_failure&since=${url.searchParams.get('since')}`);
  assert.ok(shown.every((r) => r[1] === 'auth_failure'), JSON.stringify(shown));
  assert.ok(shown.some((r) => r[2] === '401'));
  await shot(page, 'audit-en-auth-failures');

  url = await reload(page, () => kind.selectOption('api'));
  shown = await sameAsDaemon(`&kind=api&since=${url.searchParams.get('since')}`);
  assert.ok(shown.every((r) => r[1] === 'api'));

  // The key picker is the daemon's key list.
  const keys = (await d.json('GET', '/v1/admin/keys', { key: adminKey })).json.data;
  const offered = await page.locator('select[name="key"] option').evaluateAll((os) => os.map((o) => o.value));
  assert.deepEqual(offered, ['', ...keys.map((k) => k.id)]);
  url = await reload(page, () => page.locator('select[name="key"]').selectOption(chatId));
  assert.equal(url.searchParams.get('key'), chatId);
  shown = await sameAsDaemon(`&kind=api&key=${chatId}&since=${url.searchParams.get('since')}`);
  assert.ok(shown.length >= 2 && shown.every((r) => r[3] === 'audit-chat'), JSON.stringify(shown));

  // Time ranges: the last hour asks from an hour ago; "all" asks without a start.
  url = await reload(page, () => page.locator('select[name="range"]').selectOption('1h'));
  assert.ok(Math.abs(Number(url.searchParams.get('since')) - (Math.floor(Date.now() / 1000) - 3600)) < 120);
  url = await reload(page, () => page.locator('select[name="range"]').selectOption('7d'));
  assert.ok(Math.abs(Number(url.searchParams.get('since')) - (Math.floor(Date.now() / 1000) - 7 * 86400)) < 120);
  url = await reload(page, () => page.locator('select[name="range"]').selectOption('all'));
  assert.equal(url.searchParams.get('since'), null);

  // Refresh shows a call made meanwhile, on top.
  const before = await rows();
  const again = await d.request('GET', '/v1/models', { key: chatKey, headers: { 'X-Request-Id': 'audit-later' } });
  assert.equal(again.status, 200);
  await reload(page, () => page.locator('.audit-filters button', { hasText: 'Refresh' }).click());
  const after = await rows();
  const later = byRequest(await records(), 'audit-later');
  assert.deepEqual(after[0], [later.seq, 'api', '200', 'audit-chat']);
  assert.deepEqual(after.slice(1), before);

  // Filters that match nothing say so (a refused key names no key).
  await reload(page, () => kind.selectOption('auth_failure'));
  assert.equal(await page.locator('tr.audit-row').count(), 0);
  await page.locator('.audit-empty').waitFor();
  await reload(page, () => page.locator('select[name="key"]').selectOption(''));
  const failures = await records('&kind=auth_failure');
  assert.ok(failures.length >= 1);
  assert.equal(await page.locator('tr.audit-row').count(), failures.length);
  await reload(page, () => kind.selectOption(''));
});

test('phone-sized screen in Chinese: the Audit page fits, every control named', async () => {
  const t = await browser({ locale: 'zh-CN', viewport: { width: 375, height: 740 } });
  try {
    const p = await t.context.newPage();
    const seen = watch(p);
    await signIn(p, adminKey);
    assert.equal(await p.locator('nav.tabs a[data-route="audit"]').textContent(), '审计');
    await reload(p, () => p.locator('nav.tabs a[data-route="audit"]').click());
    assert.equal(await p.locator('.audit h2').textContent(), '审计日志');
    assert.equal(await p.locator('.audit-filters button').textContent(), '刷新');
    const refused = byRequest(await records(), 'audit-401');
    const row = p.locator(`tr.audit-row[data-seq="${refused.seq}"]`);
    assert.equal(await row.locator('.badge.kind-auth_failure').textContent(), '认证失败');
    await row.locator('button.audit-toggle').click();
    const [w, cw] = await p.evaluate(() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]);
    assert.ok(w <= cw, `page wider than the screen ${w} > ${cw}`);
    // Only the table scrolls sideways (inside its frame); nothing else reaches past the screen.
    const spill = await p.evaluate(() => [...document.querySelectorAll('.audit *')]
      .filter((e) => e.offsetParent !== null && !e.closest('.table-wrap'))
      .filter((e) => { const r = e.getBoundingClientRect(); return r.width > 0 && (r.right > window.innerWidth + 1 || r.left < -1); })
      .map((e) => e.outerHTML.slice(0, 60)));
    assert.deepEqual(spill, []);
    const wrap = await p.locator('.audit .table-wrap').evaluate((e) => e.getBoundingClientRect().right);
    assert.ok(wrap <= 376, `table frame ends at ${wrap}`);
    const unnamed = await p.evaluate(() => [...document.querySelectorAll('main button, main input, main select, main textarea')]
      .filter((e) => e.offsetParent !== null)
      .filter((e) => !(e.getAttribute('aria-label') || e.textContent.trim() || (e.id && document.querySelector(`label[for="${e.id}"]`)) || e.closest('label')))
      .map((e) => e.outerHTML.slice(0, 80)));
    assert.deepEqual(unnamed, []);
    await shot(p, 'audit-phone-zh');
    assert.deepEqual(seen, []);
  } finally {
    await t.close();
  }
});

test('a key without the admin scope gets no Audit page', async () => {
  const t = await browser();
  try {
    const p = await t.context.newPage();
    const seen = watch(p);
    await signIn(p, chatKey);
    assert.equal(await p.locator('nav.tabs a[data-route="audit"]').isVisible(), false);
    await p.goto(`${d.url}/#/audit`);
    await p.locator('.chat').waitFor();
    assert.equal(await p.locator('.audit').count(), 0);
    assert.deepEqual(seen, []);
  } finally {
    await t.close();
  }
});

test('no script errors, policy violations or dialogs', () => {
  assert.deepEqual(problems, []);
});
