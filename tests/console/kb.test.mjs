// The console's knowledge-base screens against the knowledge-base HTTP API (collections,
// documents, search, RAG chat with citations). Written to the API's contract; scripts/test runs
// this file once the daemon's OpenAPI document lists `/v1/kb/search`.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Daemon, browser, watch, shot } from './harness.mjs';

const COLLECTION = 'handbook';
const LEAVE = [
  '# Annual leave',
  '',
  'Every employee has 25 days of annual leave per calendar year.',
  'Unused annual leave days can be carried over until the end of March.',
  '',
  '## Sick leave',
  '',
  'Report sick leave to your manager before 9 am on the first day.',
].join('\n');
const INJECT = '<img src=x onerror=alert(1)>';
const NOTICE = `Office notice. ${INJECT} The office closes at 6 pm on Fridays. <script>alert(2)</script>`;

let d;
let key;
let b;
let page;
let problems;

before(async () => {
  d = await Daemon.start();
  key = d.key('kb-editor', `chat,kb:write:*`);
  b = await browser();
  page = await b.context.newPage();
  problems = watch(page);
  await page.goto(`${d.url}/`);
  await page.fill('#key', key);
  await page.locator('form.signin button[type="submit"]').click();
  await page.locator('.chat').waitFor();
});

after(async () => {
  await b?.close();
  await d?.stop();
});

test('knowledge: create a collection, upload several files with per-file results, list them', async () => {
  await page.locator('nav.tabs a[data-route="knowledge"]').click();
  await page.fill('.collections input[name="collection"]', COLLECTION);
  await page.locator('.collections button[type="submit"]').click();
  await page.locator('.col-list .col', { hasText: COLLECTION }).waitFor();
  await page.locator('.kb-detail h2', { hasText: COLLECTION }).waitFor();

  // The file picker takes several files at once; unsupported and broken ones fail alone.
  await page.setInputFiles('.dropzone input[type="file"]', [
    { name: 'leave.md', mimeType: 'text/markdown', buffer: Buffer.from(LEAVE) },
    { name: 'tool.exe', mimeType: 'application/octet-stream', buffer: Buffer.from('MZ\u0000\u0001binary') },
    { name: 'broken.pdf', mimeType: 'application/pdf', buffer: Buffer.from('this is not a PDF') },
  ]);
  // Drag and drop adds files too.
  const dt = await page.evaluateHandle((text) => {
    const t = new DataTransfer();
    t.items.add(new File([text], 'notice.txt', { type: 'text/plain' }));
    return t;
  }, NOTICE);
  await page.dispatchEvent('.dropzone', 'drop', { dataTransfer: dt });

  const row = (name) => page.locator('.uploads li', { hasText: name });
  for (const name of ['leave.md', 'notice.txt']) {
    await row(name).and(page.locator('.ok')).waitFor({ timeout: 60_000 });
    assert.equal(await row(name).locator('progress').evaluate((p) => p.value), 1);
    assert.match(await row(name).locator('.state').textContent(), /Added: \d+ chunks?/);
  }
  await row('tool.exe').and(page.locator('.failed')).waitFor();
  await row('broken.pdf').and(page.locator('.failed')).waitFor();
  assert.ok((await row('tool.exe').locator('.state').textContent()).length > 0);
  assert.ok((await row('broken.pdf').locator('.state').textContent()).length > 0);

  await page.locator('.docs th.file', { hasText: 'leave.md' }).waitFor();
  await page.locator('.docs th.file', { hasText: 'notice.txt' }).waitFor();
  assert.equal(await page.locator('.docs tbody tr').count(), 2);
  const listed = (await d.json('GET', `/v1/kb/collections/${COLLECTION}/documents`, { key })).json.data.map((x) => x.filename).sort();
  assert.deepEqual(listed, ['leave.md', 'notice.txt']);
  await shot(page, 'knowledge');
});

test('knowledge: retrieval search shows chunks as text, HTML included', async () => {
  await page.fill('.search input[name="query"]', 'annual leave days');
  await page.locator('.search button[type="submit"]').click();
  await page.locator('.results .result', { hasText: 'leave.md' }).first().waitFor();

  await page.fill('.search input[name="query"]', 'office closes Fridays');
  await page.selectOption('.search select[name="mode"]', 'bm25');
  await page.locator('.search button[type="submit"]').click();
  const hit = page.locator('.results .result', { hasText: 'notice.txt' }).first();
  await hit.waitFor();
  assert.ok((await hit.locator('.result-text').textContent()).includes(INJECT));
  assert.equal(await page.locator('.results img, .results script').count(), 0);
  await shot(page, 'knowledge-search');
});

test('chat with knowledge: numbered sources open the cited chunk, shown as text', async () => {
  await page.locator('nav.tabs a[data-route="chat"]').click();
  await page.locator('.toolbar button', { hasText: 'Knowledge' }).click();
  await page.locator('.popover input[type="checkbox"][value="handbook"]').check();
  await page.locator('.toolbar button', { hasText: 'Knowledge' }).click();
  assert.equal(await page.locator('.toolbar button', { hasText: 'Knowledge (1)' }).getAttribute('aria-pressed'), 'true');
  const settings = page.locator('.toolbar button', { hasText: 'Settings' });
  await settings.click();
  await page.fill('.settings [name="max_tokens"]', '24');
  await settings.click();

  const sent = page.waitForRequest((r) => r.url().endsWith('/v1/chat/completions'));
  await page.fill('.composer textarea', 'When does the office close, and how many days of annual leave are there?');
  await page.keyboard.press('Enter');
  const body = (await sent).postDataJSON();
  assert.deepEqual(body.knowledge, { collections: [COLLECTION], top_k: 5 });
  await page.locator('.composer .send').waitFor({ state: 'visible', timeout: 60_000 });

  const sources = page.locator('.msg.assistant').last().locator('.sources li');
  assert.ok((await sources.count()) >= 1, 'the answer lists its sources');
  const first = await sources.first().textContent();
  assert.match(first, /^1/);
  const cited = sources.filter({ hasText: 'notice.txt' }).first();
  await cited.locator('button').click();
  const dlg = page.locator('dialog.cite-dialog');
  await dlg.waitFor();
  assert.ok((await dlg.locator('.chunk').textContent()).includes(INJECT));
  await dlg.locator('.doc-chunk.cited').waitFor();
  assert.equal(await page.locator('dialog img, dialog script, .messages img').count(), 0);
  await shot(page, 'chat-citation');
  await dlg.locator('header button').click();
  await dlg.waitFor({ state: 'detached' });
});

test('the console offers each key exactly what it may do, with its own preferences', async () => {
  // The editor's page chose `handbook` for knowledge chat (the test above); that choice is its
  // own. The same browser (shared storage) now serves a reader and a chat-only key.
  const p = await b.context.newPage();
  const seen = watch(p);
  const asked = [];
  p.on('request', (r) => asked.push(new URL(r.url()).pathname));
  const signIn = async (k) => {
    await p.goto(`${d.url}/`);
    await p.fill('#key', k);
    await p.locator('form.signin button[type="submit"]').click();
    await p.locator('.chat').waitFor();
  };
  await signIn(d.key('kb-reader', `chat,kb:read:${COLLECTION}`));
  // Only chat models: the knowledge base's embedding model is listed by /v1/models but not
  // offered to chat with.
  const listed = (await d.json('GET', '/v1/models', { key })).json.data.map((m) => m.id);
  await p.locator('.chat select option').first().waitFor({ state: 'attached' });
  const offered = await p.locator('.chat select option').evaluateAll((os) => os.map((o) => o.value));
  assert.ok(listed.some((id) => !offered.includes(id)), `an embedding model among ${listed}`);
  assert.ok(offered.length >= 1 && offered.every((id) => listed.includes(id)));
  // A new chat of this key starts without the editor's collections.
  assert.equal(await p.locator('.toolbar button', { hasText: 'Knowledge' }).textContent(), 'Knowledge');
  // Read only: the collection is listed and searchable, nothing offers to change it.
  await p.locator('nav.tabs a[data-route="knowledge"]').click();
  await p.locator('.col-list .col', { hasText: COLLECTION }).click();
  await p.locator('.docs tbody tr').first().waitFor();
  assert.equal(await p.locator('.kb form.stack').isVisible(), false, 'no create form');
  assert.equal(await p.locator('.col-list li button.icon').count(), 0, 'no delete for the collection');
  assert.equal(await p.locator('.dropzone').isVisible(), false, 'no upload');
  assert.equal(await p.locator('.docs button').count(), 0, 'no delete for documents');
  await shot(p, 'knowledge-read-only');

  await p.locator('header button', { hasText: 'Sign out' }).click();
  await p.locator('#signin-msg', { hasText: 'You are signed out.' }).waitFor();
  await signIn(d.key('kb-chat-only', 'chat'));
  assert.equal(await p.locator('nav.tabs a[data-route="knowledge"]').isVisible(), false);
  assert.equal(await p.locator('.toolbar button', { hasText: 'Knowledge' }).isVisible(), false);
  await p.goto(`${d.url}/#/knowledge`);
  await p.locator('.chat').waitFor();
  assert.equal(await p.locator('.kb').count(), 0);
  // The permissions came from /v1/me, never from probing routes the key may not use.
  assert.ok(asked.includes('/v1/me'));
  assert.deepEqual(asked.filter((u) => u.startsWith('/v1/admin/')), []);
  assert.deepEqual(seen, []);
  await p.close();
});

test('knowledge: delete a document, then the collection', async () => {
  await page.locator('nav.tabs a[data-route="knowledge"]').click();
  await page.locator('.col-list .col', { hasText: COLLECTION }).click();
  await page.locator('.docs tr', { hasText: 'notice.txt' }).locator('button').click();
  await page.locator('dialog.confirm button.danger').click();
  await page.locator('.docs tr', { hasText: 'notice.txt' }).waitFor({ state: 'detached' });
  assert.equal(await page.locator('.docs tbody tr').count(), 1);
  await page.locator('.col-list li', { hasText: COLLECTION }).locator('button.icon').click();
  await page.locator('dialog.confirm button.danger').click();
  await page.locator('.col-list li', { hasText: COLLECTION }).waitFor({ state: 'detached' });
  const left = (await d.json('GET', '/v1/kb/collections', { key })).json.data;
  assert.deepEqual(left, []);
  assert.deepEqual(problems, []);
});
