// Agents and web search in the browser console, against the real daemon on the tiny fixture
// model: the Agents page (create / edit / delete through the admin API, its errors at the form,
// tools from /v1/admin/tools and collections from the knowledge base), the test chat with an
// agent (the steps the daemon streams, updated in place; knowledge and web citations), agents in
// the chat's model picker (whole answers' `agent.steps`), the Web search toggle (and a key
// without the `web` scope, an appliance without a search service), and the phone layout.
//
// The random fixture model never calls a tool by itself, and its template renders no tools. As
// in tests/e2e/test_agents.py, the daemon serves a copy of it (made by `agentModel` below) whose
// chat template renders tools and teaches Hermes-style `<tool_call>` blocks, and whose added
// tokens 1548 and 1549 (unused by that template) decode to a complete web_search / kb_search
// call followed by `#END#`. The tests' requests go out as the console builds them plus
// `logit_bias` forcing one of those tokens, `stop: ["#END#"]` and a small `max_tokens`: every
// turn of the agent calls that tool, until its step limit gives the model a last turn without
// tools; the daemon's own tool-call reader, loop and tools do the rest, and every response the
// page renders is the daemon's, read from the wire. The search service the daemon is
// configured with is a SearXNG-compatible JSON endpoint on 127.0.0.1 (below, `searchService`)
// that answers after a delay, so the page has time to show a running step before it finishes;
// its results include a `javascript:` URL and HTML in a title, which must stay text.
//
// Screenshots go to tests/console/artifacts/ (git-ignored).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { Daemon, browser, watch, shot, MODEL, MODEL_DIR } from './harness.mjs';

const END = '#END#';
const WEB = '1548';
const KB = '1549';
const CALLS = { [WEB]: ['web_search', { query: 'vpn setup' }], [KB]: ['kb_search', { query: 'annual leave' }] };
const TEMPLATE = `{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.tool_calls %}{% for c in m.tool_calls %}<call>{{ c.function.name }}</call>{% endfor %}{% else %}{{ (m.content or '')[:300] }}{% endif %}<|im_end|>\n{% endfor %}{% if tools %}<|im_start|>system\nCall with <tool_call>\n{"name": …, "arguments": …}\n</tool_call>{% for t in tools %} {{ t.function.name }}{% endfor %}<|im_end|>\n{% endif %}<|im_start|>assistant\n`;

/** The fixture copied (same name) with the tool template and the two call tokens. */
function agentModel() {
  const dir = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'edgeseek-agent-model-')), MODEL);
  fs.cpSync(MODEL_DIR, dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'chat_template.jinja'), TEMPLATE);
  const tokPath = path.join(dir, 'tokenizer.json');
  const cfgPath = path.join(dir, 'tokenizer_config.json');
  const tok = JSON.parse(fs.readFileSync(tokPath, 'utf8'));
  const cfg = JSON.parse(fs.readFileSync(cfgPath, 'utf8'));
  for (const [id, [name, args]] of Object.entries(CALLS)) {
    const text = `<tool_call>\n${JSON.stringify({ name, arguments: args })}\n</tool_call>${END}`;
    const added = tok.added_tokens.find((a) => String(a.id) === id);
    assert.equal(added.special, false);
    added.content = text;
    cfg.added_tokens_decoder[id].content = text;
  }
  fs.writeFileSync(tokPath, JSON.stringify(tok));
  fs.writeFileSync(cfgPath, JSON.stringify(cfg));
  return dir;
}

const INJECT = '<img src=x onerror=alert(1)>';
const RESULTS = [
  { url: 'https://intranet.example/vpn-setup', title: 'VPN setup guide', content: 'Install the client, then sign in with your staff account.' },
  { url: 'http://wiki.example/printers', title: `Printers ${INJECT}`, content: 'Printers on floor 2 use the queue PRN-2.' },
  { url: 'javascript:alert(1)', title: 'Not a page', content: 'A result whose URL is not a web address.' },
];
const SEARCH_DELAY_MS = 1500;
const LEAVE = '# Annual leave\n\nEvery employee has 25 days of annual leave per calendar year.\n\n## VPN\n\nThe VPN client is at vpn.example; sign in with the staff account.\n';

/**
 * A SearXNG-compatible search endpoint on loopback (`/search?q=…&format=json`). It records each
 * query and answers after `delay` ms with RESULTS (SearXNG's `results` list).
 */
async function searchService(delay = SEARCH_DELAY_MS) {
  const queries = [];
  const server = http.createServer((req, res) => {
    const u = new URL(req.url, 'http://127.0.0.1');
    queries.push({ path: u.pathname, q: u.searchParams.get('q'), format: u.searchParams.get('format') });
    setTimeout(() => {
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ query: u.searchParams.get('q') || '', number_of_results: RESULTS.length, results: RESULTS.map((r) => ({ ...r, engine: 'fixture', score: 1 })) }));
    }, delay);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${server.address().port}`, queries, close: () => new Promise((r) => { server.closeAllConnections?.(); server.close(r); }) };
}

let search;
let modelDir;
let d; // with web search, serving the tool-calling copy of the fixture
let bare; // without
let adminKey;
let b;
let page;
let problems;

/** The SSE events of a streamed response, parsed (without `[DONE]`). */
const events = (text) => text.split('\n\n').map((e) => e.replace(/^data: /, '')).filter((e) => e && e !== '[DONE]').map((e) => JSON.parse(e));

async function signIn(p, daemon, key, view = '.chat') {
  await p.goto(`${daemon.url}/`);
  await p.fill('#key', key);
  await p.locator('form.signin button[type="submit"]').click();
  await p.locator(view).first().waitFor();
}

/**
 * Route the page's chat requests to the daemon with `extra` added (the forced tool, a token
 * limit); `log` gets each request body as the console sent it and the daemon's response text.
 * The response streams to the page as the daemon sends it (the route only rewrites the request).
 */
async function forward(p, log, extra) {
  await p.route('**/v1/chat/completions', (route) => {
    const body = route.request().postDataJSON();
    route.continue({ postData: JSON.stringify({ ...body, ...(typeof extra === 'function' ? extra(body) : extra) }) });
  });
  const onResponse = async (r) => {
    if (!r.url().endsWith('/v1/chat/completions')) return;
    const entry = { body: r.request().postDataJSON(), status: r.status() };
    log.push(entry);
    try { entry.text = await r.text(); } catch { entry.text = ''; }
  };
  p.on('response', onResponse);
  return async () => { p.off('response', onResponse); await p.unroute('**/v1/chat/completions'); };
}

/** Request fields that make every turn of an agent write the call of `token`. */
const forced = (token) => ({ logit_bias: { [token]: 100 }, stop: [END], max_tokens: 8 });

const idle = (p) => p.locator('.composer .send').first().waitFor({ state: 'visible', timeout: 90_000 });

/** Wait until the log has `n` entries with their bodies read. */
async function logged(log, n) {
  const deadline = Date.now() + 90_000;
  while (Date.now() < deadline && !(log.length >= n && log.slice(0, n).every((e) => e.text !== undefined))) await new Promise((r) => setTimeout(r, 50));
  assert.ok(log.length >= n, `${log.length} chat responses, expected ${n}`);
}

/** Tool, status and summary of every agent step shown in `scope`. */
function shownSteps(scope) {
  return scope.locator('.agent-step').evaluateAll((els) => els.map((e) => ({
    call: e.dataset.call,
    status: e.dataset.status,
    tool: e.querySelector('.tool-name').textContent,
    summary: e.querySelector('.step-summary').textContent,
  })));
}

/** The finished Step of each call in a streamed response, in order, and every step event. */
function wireSteps(text) {
  const all = events(text).filter((e) => e.agent_step).map((e) => e.agent_step);
  const done = new Map();
  for (const s of all) if (s.status !== 'running') done.set(s.call, s);
  return { all, done: [...done.values()] };
}

before(async () => {
  search = await searchService();
  modelDir = agentModel();
  d = await Daemon.start({ model: modelDir, config: `[web_search]\nsearxng_url = "${search.url}"\ntop_n = 3\nfetch = 0\ntimeout_s = 10\n` });
  bare = await Daemon.start();
  adminKey = d.key('console-agents-admin', 'admin');
  // A collection with a document for kb_search (the KB's own upload API), once the knowledge
  // base is open (503 until the embedding model has loaded).
  let made;
  for (const until = Date.now() + 60_000; Date.now() < until;) {
    made = await d.json('POST', '/v1/kb/collections', { key: adminKey, body: { name: 'it' } });
    if (made.status !== 503) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  assert.equal(made.status, 201, JSON.stringify(made.json));
  const up = await d.request('POST', '/v1/kb/collections/it/documents?filename=handbook.md', {
    key: adminKey, body: Buffer.from(LEAVE), headers: { 'Content-Type': 'text/markdown' },
  });
  assert.equal(up.status, 201, up.body.toString());
  b = await browser();
  page = await b.context.newPage();
  problems = watch(page);
});

after(async () => {
  await b?.close();
  await d?.stop();
  await bare?.stop();
  await search?.close();
  if (modelDir) fs.rmSync(path.dirname(modelDir), { recursive: true, force: true });
});

test('Agents page: the form creates an agent with the tools and collections the daemon offers', async () => {
  await signIn(page, d, adminKey);
  await page.locator('nav.tabs a[data-route="agents"]').click();
  await page.locator('.agent-form').waitFor();
  assert.equal(await page.locator('.agent-list li').count(), 0);

  // The tool picker is the daemon's tool list; the collections are the knowledge base's.
  const tools = (await d.json('GET', '/v1/admin/tools', { key: adminKey })).json;
  const offered = await page.locator('.tool-checks input').evaluateAll((els) => els.map((e) => [e.value, e.disabled]));
  assert.deepEqual(offered, tools.data.map((x) => [x.name, x.available === false]).concat(tools.servers.map((s) => [`mcp:${s.name}/*`, false])));
  for (const name of ['kb_search', 'web_search', 'fetch_url', 'current_time']) assert.ok(offered.some(([v]) => v === name), name);
  assert.deepEqual(await page.locator('.agent-form fieldset[name="collections"] input').evaluateAll((els) => els.map((e) => e.value)), ['it']);
  await shot(page, 'agents-new');

  const form = page.locator('.agent-form');
  await form.locator('[name="name"]').fill('helpdesk');
  await form.locator('[name="description"]').fill('IT helpdesk for staff');
  await form.locator('[name="instructions"]').fill('Answer briefly.');
  await form.locator('.tool-checks input[value="kb_search"]').check();
  await form.locator('.tool-checks input[value="current_time"]').check();
  await form.locator('fieldset[name="collections"] input[value="it"]').check();
  await form.locator('[name="max_steps"]').fill('3');
  await form.locator('[name="temperature"]').fill('0.5');
  await form.locator('[name="fetch_sites"]').fill('https://intranet.example/\n\n  https://wiki.example/  ');
  await form.locator('button[type="submit"]').click();
  await page.locator('.agent-list .col', { hasText: 'helpdesk' }).waitFor();
  await page.locator('.toast-item', { hasText: 'Agent “helpdesk” created.' }).waitFor();

  // What the daemon keeps is what the form said.
  const a = (await d.json('GET', '/v1/admin/agents/helpdesk', { key: adminKey })).json;
  assert.deepEqual({ ...a, created: 0, updated: 0 }, {
    name: 'helpdesk', description: 'IT helpdesk for staff', model: null, instructions: 'Answer briefly.',
    tools: ['kb_search', 'current_time'], collections: ['it'], max_steps: 3, reasoning_budget: null,
    temperature: 0.5, fetch_sites: ['https://intranet.example/', 'https://wiki.example/'], created: 0, updated: 0,
  });
  // The form now edits it: the name is fixed, Delete is offered, the test chat is there.
  assert.equal(await form.locator('[name="name"]').evaluate((e) => e.readOnly), true);
  assert.equal(await form.locator('button', { hasText: 'Delete agent' }).isVisible(), true);
  assert.match(await page.locator('.agent-test .test-title').textContent(), /agent:helpdesk/);
  assert.match(await page.locator('.agent-list .col', { hasText: 'helpdesk' }).textContent(), /IT helpdesk for staff/);
  await shot(page, 'agents-created');
});

test('Agents page: the daemon\'s errors show at the form and mark the field; edits save; delete asks first', async () => {
  const form = page.locator('.agent-form');
  const msg = form.locator('.formmsg');
  // Out of range: the daemon's 400 names max_steps.
  await form.locator('[name="max_steps"]').fill('99');
  await form.locator('button[type="submit"]').click();
  await form.locator('.formmsg.error').waitFor();
  const want = (await d.json('PATCH', '/v1/admin/agents/helpdesk', { key: adminKey, body: { max_steps: 99 } })).json.error;
  assert.equal(want.param, 'max_steps');
  assert.equal(await msg.textContent(), want.message);
  assert.equal(await form.locator('[name="max_steps"]').getAttribute('aria-invalid'), 'true');
  assert.equal((await d.json('GET', '/v1/admin/agents/helpdesk', { key: adminKey })).json.max_steps, 3, 'nothing was saved');

  // Fixed, and other fields changed: the temperature cleared goes as null.
  await form.locator('[name="max_steps"]').fill('2');
  assert.equal(await form.locator('[name="max_steps"]').getAttribute('aria-invalid'), null);
  await form.locator('[name="description"]').fill('IT helpdesk (staff only)');
  await form.locator('[name="temperature"]').fill('');
  await form.locator('[name="reasoning_budget"]').fill('16');
  await form.locator('.tool-checks input[value="current_time"]').uncheck();
  await form.locator('button[type="submit"]').click();
  await page.locator('.toast-item', { hasText: 'Agent “helpdesk” saved.' }).waitFor();
  const a = (await d.json('GET', '/v1/admin/agents/helpdesk', { key: adminKey })).json;
  assert.deepEqual([a.description, a.max_steps, a.temperature, a.reasoning_budget, a.tools], ['IT helpdesk (staff only)', 2, null, 16, ['kb_search']]);
  assert.equal(await msg.textContent(), '');

  // A new agent with a taken name, then with a bad one: the daemon's messages, at the form.
  await page.locator('.agents button', { hasText: 'New agent' }).click();
  assert.equal(await form.locator('[name="name"]').inputValue(), '');
  await form.locator('[name="name"]').fill('helpdesk');
  await form.locator('button[type="submit"]').click();
  await form.locator('.formmsg.error').waitFor();
  const dup = (await d.json('POST', '/v1/admin/agents', { key: adminKey, body: { name: 'helpdesk' } }));
  assert.equal(dup.status, 409);
  assert.equal(await msg.textContent(), dup.json.error.message);
  await form.locator('[name="name"]').fill('no spaces');
  await form.locator('button[type="submit"]').click();
  await page.waitForFunction((old) => document.querySelector('.agent-form .formmsg').textContent !== old, dup.json.error.message);
  const bad = (await d.json('POST', '/v1/admin/agents', { key: adminKey, body: { name: 'no spaces' } })).json.error;
  assert.equal(await msg.textContent(), bad.message);
  assert.equal(await form.locator('[name="name"]').getAttribute('aria-invalid'), 'true');
  await shot(page, 'agents-error');
  // An unknown tool is the daemon's to refuse, too.
  const unknown = await d.json('POST', '/v1/admin/agents', { key: adminKey, body: { name: 'x', tools: ['rm_rf'] } });
  assert.equal(unknown.status, 400);

  // Delete: a confirmation first; Cancel keeps the agent, Delete removes it.
  assert.equal((await d.json('POST', '/v1/admin/agents', { key: adminKey, body: { name: 'scratch', description: 'to delete' } })).status, 201);
  await page.reload();
  await page.locator('.agent-list .col', { hasText: 'scratch' }).click();
  await form.locator('button', { hasText: 'Delete agent' }).click();
  await page.locator('dialog.confirm', { hasText: 'scratch' }).waitFor();
  await page.locator('dialog.confirm button', { hasText: 'Cancel' }).click();
  assert.equal((await d.json('GET', '/v1/admin/agents/scratch', { key: adminKey })).status, 200);
  await form.locator('button', { hasText: 'Delete agent' }).click();
  await page.locator('dialog.confirm button.danger').click();
  await page.locator('.toast-item', { hasText: 'Agent “scratch” deleted.' }).waitFor();
  assert.equal((await d.json('GET', '/v1/admin/agents/scratch', { key: adminKey })).status, 404);
  assert.deepEqual(await page.locator('.agent-list .col .name').allTextContents(), ['helpdesk']);
});

test('test chat: a streamed step shows running, then finishes in place with its summary; web sources are safe links', async () => {
  // An agent whose tool is web search: the search service takes 1.5 s, long enough to see it run.
  assert.equal((await d.json('POST', '/v1/admin/agents', {
    key: adminKey, body: { name: 'researcher', description: 'Looks things up', tools: ['web_search'], max_steps: 1 },
  })).status, 201);
  await page.reload();
  await page.locator('.agent-list .col', { hasText: 'researcher' }).click();
  await page.locator('.agent-test .test-title', { hasText: 'agent:researcher' }).waitFor();
  const chat = page.locator('.agent-test');
  const log = [];
  const stop = await forward(page, log, forced(WEB));
  // Every frame: the states each call's step showed, and the most elements a call had at once.
  await page.evaluate(() => {
    window.seen = {};
    const tick = () => {
      const n = {};
      for (const e of document.querySelectorAll('.agent-test .agent-step')) {
        const s = (window.seen[e.dataset.call] ??= { states: [], most: 0 });
        if (s.states.at(-1) !== e.dataset.status) s.states.push(e.dataset.status);
        n[e.dataset.call] = (n[e.dataset.call] || 0) + 1;
        s.most = Math.max(s.most, n[e.dataset.call]);
      }
      if (!window.stopSeen) requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
  });
  const before = search.queries.length;
  await chat.locator('.composer textarea').fill('How do I set up the VPN?');
  await chat.locator('.composer textarea').press('Enter');
  await chat.locator('.agent-step[data-status="running"]').waitFor({ timeout: 30_000 });
  assert.equal(await chat.locator('.agent-step .badge').first().textContent(), 'running…');
  // Opened while it runs, it stays open when it finishes and when the answer ends.
  await chat.locator('.agent-step summary').first().click();
  assert.equal(await chat.locator('.agent-step').first().evaluate((e) => e.open), true);
  await shot(page, 'agents-test-running');
  await idle(chat);
  await logged(log, 1);
  const seen = await page.evaluate(() => { window.stopSeen = true; return window.seen; });
  await stop();

  // The wire: the request as the console built it, the step started and finished.
  assert.equal(log[0].status, 200);
  assert.equal(log[0].body.model, 'agent:researcher');
  assert.equal(log[0].body.stream, true);
  for (const k of ['tools', 'knowledge', 'web_search']) assert.equal(log[0].body[k], undefined, k);
  const { all, done } = wireSteps(log[0].text);
  assert.equal(done.length, 1, log[0].text.slice(0, 2000));
  const first = done[0];
  assert.equal(first.tool, 'web_search');
  assert.equal(first.status, 'ok');
  assert.deepEqual(all.filter((s) => s.call === first.call).map((s) => s.status), ['running', 'ok']);
  assert.deepEqual(first.arguments, { query: 'vpn setup' });
  assert.equal(search.queries.length, before + 1);
  assert.equal(search.queries.at(-1).q, 'vpn setup');
  // One step was the limit: the daemon says it stopped there, and so does the page.
  const last = events(log[0].text).find((e) => e.agent);
  assert.equal(last.agent.name, 'researcher');
  assert.equal(last.agent.stopped, 'max_steps');
  assert.equal(await chat.locator('.msg.assistant .status').textContent(), 'The agent stopped at its step limit before it finished (Agents → Max steps).');

  // The page: the call's step showed `running`, then `ok`, and was never shown twice.
  assert.deepEqual(seen[first.call], { states: ['running', 'ok'], most: 1 });
  assert.deepEqual(await shownSteps(chat), done.map((s) => ({ call: s.call, status: s.status, tool: s.tool, summary: s.summary || '' })));
  const step = chat.locator('.agent-step').first();
  assert.match(await step.locator('.step-duration').textContent(), new RegExp(`^${first.duration_ms} ms$`));
  assert.equal(await step.evaluate((e) => e.open), true, 'still open');
  assert.deepEqual(JSON.parse(await step.locator('.tool-args').textContent()), first.arguments);
  await step.locator('summary').click();
  assert.equal(await step.locator('.tool-args').isVisible(), false);

  // Web citations: http(s) ones as links opening a new page without an opener; the rest text.
  const cites = first.citations || [];
  assert.ok(cites.length >= 2 && cites.every((c) => 'url' in c), JSON.stringify(cites));
  const links = await chat.locator('.sources a.source.web').evaluateAll((els) => els.map((a) => ({ href: a.getAttribute('href'), rel: a.rel, target: a.target, title: a.querySelector('.file').textContent })));
  const safe = cites.filter((c) => /^https?:\/\//.test(c.url));
  assert.deepEqual(links.map((l) => [l.href, l.title]), safe.map((c) => [new URL(c.url).href, c.title || c.url]));
  assert.ok(links.every((l) => l.rel.includes('noopener') && l.target === '_blank'), JSON.stringify(links));
  assert.equal(await chat.locator('.sources [href^="javascript"], .messages img').count(), 0);
  if (cites.some((c) => c.title && c.title.includes(INJECT))) assert.ok((await chat.locator('.sources').textContent()).includes(INJECT), 'HTML in a title is text');
  await shot(page, 'agents-test-done');
});

test('test chat: a kb_search step brings the agent\'s knowledge passages as sources', async () => {
  await page.locator('.agent-list .col', { hasText: 'helpdesk' }).click();
  const chat = page.locator('.agent-test');
  await chat.locator('.test-title', { hasText: 'agent:helpdesk' }).waitFor();
  const log = [];
  const stop = await forward(page, log, forced(KB));
  await chat.locator('.composer textarea').fill('How many days of leave?');
  await chat.locator('.composer textarea').press('Enter');
  await chat.locator('.agent-step').first().waitFor({ timeout: 30_000 });
  await idle(chat);
  await logged(log, 1);
  await stop();
  const { done } = wireSteps(log[0].text);
  assert.equal(done[0].tool, 'kb_search');
  assert.equal(done[0].status, 'ok');
  assert.deepEqual(await shownSteps(chat), done.map((s) => ({ call: s.call, status: s.status, tool: s.tool, summary: s.summary || '' })));
  assert.equal(done.length, 2, 'two steps: the limit set on the form');
  const cites = events(log[0].text).find((e) => e.agent).citations;
  assert.ok(cites.length > 0 && cites.every((c) => c.collection === 'it' && c.filename === 'handbook.md'), JSON.stringify(cites));
  assert.deepEqual(done.flatMap((s) => s.citations || []).map((c) => c.index), cites.map((c) => c.index), 'the steps brought the answer\'s sources');
  assert.deepEqual(await chat.locator('.sources .source .n').allTextContents(), cites.map((c) => String(c.index)));
  assert.deepEqual(await chat.locator('.sources .source .file').allTextContents(), cites.map((c) => c.filename));
  // A source opens the cited passage.
  await chat.locator('.sources .source').first().click();
  const dlg = page.locator('dialog.cite-dialog');
  await dlg.waitFor();
  assert.equal(await dlg.locator('.chunk').textContent(), cites[0].text);
  await dlg.locator('button[aria-label="Close"]').click();
  // Start over empties the test chat; nothing of it is kept in IndexedDB.
  await chat.locator('button', { hasText: 'Start over' }).click();
  assert.equal(await chat.locator('.msg').count(), 0);
  const stored = await page.evaluate(() => new Promise((resolve) => {
    const q = indexedDB.open('edgeseek-console');
    q.onsuccess = () => { const r = q.result.transaction('conversations').objectStore('conversations').getAll(); r.onsuccess = () => resolve(r.result.map((c) => c.model)); };
    q.onerror = () => resolve([]);
  }));
  assert.ok(!stored.some((m) => String(m).startsWith('agent:')), stored.join());
});

test('chat: keys with agent scopes pick agents (with their description); whole answers show agent.steps', async () => {
  const t = await browser();
  const p = await t.context.newPage();
  const seen = watch(p);
  try {
    // A chat-only key lists no agents.
    await signIn(p, d, d.key('no-agents', 'chat'));
    await p.locator('.toolbar select option', { hasText: MODEL }).waitFor({ state: 'attached' });
    assert.equal(await p.locator('.toolbar select optgroup').count(), 0);
    await p.locator('header button', { hasText: 'Sign out' }).click();

    // kb_search searches what both the agent and the key may read.
    const userKey = d.key('helpdesk-user', 'chat,agent:helpdesk,kb:read:it');
    await signIn(p, d, userKey);
    const group = p.locator('.toolbar select optgroup[label="Agents"]');
    await group.waitFor({ state: 'attached' });
    const models = (await d.json('GET', '/v1/models', { key: userKey })).json.data;
    const agent = models.find((m) => m.id === 'agent:helpdesk');
    assert.equal(agent.description, 'IT helpdesk (staff only)');
    assert.ok(!models.some((m) => m.id === 'agent:researcher'), 'only the agents of the key');
    assert.deepEqual(await group.locator('option').evaluateAll((els) => els.map((o) => [o.value, o.textContent])), [['agent:helpdesk', 'helpdesk — IT helpdesk (staff only)']]);
    await p.locator('.toolbar select').selectOption('agent:helpdesk');
    // An agent brings its own tools and sources: no knowledge or web toggle; its description shows.
    assert.equal(await p.locator('.toolbar .web-toggle').isVisible(), false);
    assert.equal(await p.locator('.toolbar button', { hasText: 'Knowledge' }).isVisible(), false);
    assert.match(await p.locator('.agent-note').textContent(), /helpdesk — IT helpdesk \(staff only\)/);

    // Whole answers: a Tools setting (not sent to agents) and streaming off.
    await p.locator('.toolbar button', { hasText: 'Settings' }).click();
    await p.fill('.settings [name="tools"]', '[{"type": "function", "function": {"name": "get_weather"}}]');
    await p.locator('.settings [name="stream"]').uncheck();
    await p.locator('.toolbar button', { hasText: 'Settings' }).click();
    const log = [];
    const stop = await forward(p, log, forced(KB));
    await p.fill('.composer textarea', 'Leave days?');
    await p.keyboard.press('Enter');
    await idle(p);
    await logged(log, 1);
    await stop();
    assert.equal(log[0].status, 200, log[0].text);
    assert.equal(log[0].body.stream, false);
    assert.equal(log[0].body.tools, undefined, 'client tools are not sent to an agent');
    const r = JSON.parse(log[0].text);
    assert.equal(r.agent.name, 'helpdesk');
    assert.ok(r.agent.steps.length >= 1);
    const msg = p.locator('.msg.assistant').last();
    assert.deepEqual(await shownSteps(msg), r.agent.steps.map((s) => ({ call: s.call, status: s.status, tool: s.tool, summary: s.summary || '' })));
    const squash = (x) => (x || '').replace(/\s+/g, '');
    assert.equal(squash(await msg.locator('.answer').textContent()), squash(r.choices[0].message.content));
    assert.deepEqual(await msg.locator('.sources .source .file').allTextContents(), (r.citations || []).map((c) => c.filename || c.title || c.url));
    await shot(p, 'chat-agent-whole');
    // Kept with the conversation: after a reload the steps are still there.
    await p.reload();
    await p.locator('.msg.assistant .agent-step').first().waitFor();
    assert.equal(await p.locator('.msg.assistant .agent-step').count(), r.agent.steps.length);
    assert.deepEqual(seen, []);
  } finally {
    await t.close();
  }
});

test('chat: Web search sends web_search and shows its sources as links; a key without `web` is told why up front', async () => {
  const t = await browser();
  const p = await t.context.newPage();
  const seen = watch(p);
  try {
    await signIn(p, d, d.key('web-user', 'chat,web'));
    const toggle = p.locator('.toolbar .web-toggle');
    assert.equal(await toggle.textContent(), 'Web search');
    assert.equal(await toggle.getAttribute('aria-pressed'), 'false');
    await toggle.click();
    assert.equal(await toggle.getAttribute('aria-pressed'), 'true');
    const log = [];
    const stop = await forward(p, log, { max_tokens: 24 });
    const before = search.queries.length;
    await p.fill('.composer textarea', 'printer queue floor 2');
    await p.keyboard.press('Enter');
    await idle(p);
    await logged(log, 1);
    await stop();
    assert.equal(log[0].status, 200, log[0].text);
    assert.equal(log[0].body.web_search, true);
    assert.equal(search.queries.length, before + 1);
    assert.equal(search.queries.at(-1).q, 'printer queue floor 2');
    const cites = events(log[0].text).find((e) => e.citations)?.citations || [];
    assert.ok(cites.length >= 2 && cites.every((c) => 'url' in c), JSON.stringify(cites));
    const msg = p.locator('.msg.assistant').last();
    const links = await msg.locator('.sources a.source.web').evaluateAll((els) => els.map((a) => [a.getAttribute('href'), a.rel]));
    assert.deepEqual(links.map((l) => l[0]), cites.filter((c) => /^https?:\/\//.test(c.url)).map((c) => new URL(c.url).href));
    assert.ok(links.every((l) => l[1].includes('noopener')));
    assert.equal(await msg.locator('[href^="javascript"], img').count(), 0);
    await shot(p, 'chat-web-sources');
    // The choice stays with the conversation.
    await p.reload();
    await p.locator('.msg.assistant').first().waitFor();
    assert.equal(await p.locator('.toolbar .web-toggle').getAttribute('aria-pressed'), 'true');
    await p.locator('header button', { hasText: 'Sign out' }).click();

    // Without the `web` scope (GET /v1/me says so): the toggle is off from the start and says
    // why, though this browser's last choice for new chats was on; nothing asks for a search.
    await signIn(p, d, d.key('no-web', 'chat'));
    await p.locator('.messages .empty').waitFor();
    assert.equal(await toggle.isDisabled(), true);
    assert.equal(await toggle.getAttribute('aria-pressed'), 'false');
    assert.equal(await toggle.getAttribute('title'), 'This key may not use web search (it needs the “web” scope).');
    const asked = p.waitForRequest((r) => r.url().endsWith('/v1/chat/completions'));
    await p.fill('.composer textarea', 'search something');
    await p.keyboard.press('Enter');
    assert.equal((await asked).postDataJSON().web_search, undefined);
    await idle(p);
    // The daemon refuses it all the same, for clients that ask anyway.
    const refused = await d.json('POST', '/v1/chat/completions', { key: d.key('no-web-2', 'chat'), body: { model: MODEL, messages: [{ role: 'user', content: 'x' }], web_search: true } });
    assert.equal(refused.status, 403);
    await shot(p, 'chat-web-denied');
    assert.deepEqual(seen, []);
  } finally {
    await t.close();
  }
});

test('chat: on an appliance without a search service the toggle says so (admin: at once; others: when refused)', async () => {
  const t = await browser();
  try {
    const p = await t.context.newPage();
    const seen = watch(p);
    await signIn(p, bare, bare.key('bare-admin', 'admin'));
    const toggle = p.locator('.toolbar .web-toggle');
    await p.waitForFunction(() => document.querySelector('.web-toggle').disabled);
    assert.match(await toggle.getAttribute('title'), /^Web search is not configured on this appliance/);
    await p.locator('header button', { hasText: 'Sign out' }).click();

    await signIn(p, bare, bare.key('bare-web', 'chat,web'));
    await p.locator('.messages .empty').waitFor();
    assert.equal(await toggle.isDisabled(), false);
    await toggle.click();
    await p.fill('.composer textarea', 'anything');
    await p.keyboard.press('Enter');
    await idle(p);
    const r = await bare.json('POST', '/v1/chat/completions', { key: bare.key('bare-web-2', 'chat,web'), body: { model: MODEL, messages: [{ role: 'user', content: 'x' }], web_search: true } });
    assert.equal(r.status, 400);
    assert.match(r.json.error.message, /web_search is not configured/);
    assert.equal(await p.locator('.msg.assistant .status').last().textContent(), 'Web search is not configured on this appliance.');
    assert.equal(await toggle.isDisabled(), true);
    assert.deepEqual(seen, []);
  } finally {
    await t.close();
  }
});

test('phone-sized screen in Chinese: the Agents page and its test chat fit, every control named', async () => {
  const t = await browser({ locale: 'zh-CN', viewport: { width: 375, height: 740 } });
  try {
    const p = await t.context.newPage();
    const seen = watch(p);
    await signIn(p, d, adminKey);
    assert.deepEqual(await p.locator('nav.tabs a').allTextContents(), ['对话', '知识库', '智能体', '模型', '用量', '审计', '管理']);
    assert.equal(await p.locator('.toolbar .web-toggle').textContent(), '联网搜索');
    await p.locator('nav.tabs a[data-route="agents"]').click();
    await p.locator('.agent-list .col', { hasText: 'helpdesk' }).click();
    await p.locator('.agent-test .test-title').waitFor();
    const log = [];
    const stop = await forward(p, log, forced(KB));
    await p.locator('.agent-test .composer textarea').fill('年假有几天？');
    await p.locator('.agent-test .composer textarea').press('Enter');
    await p.locator('.agent-test .agent-step').first().waitFor({ timeout: 30_000 });
    await idle(p.locator('.agent-test'));
    await stop();
    await p.locator('.agent-test .agent-step summary').first().click();
    assert.match(await p.locator('.agent-test .agent-step .tool-kind').first().textContent(), /^第 1 步$/);
    const [w, cw] = await p.evaluate(() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]);
    assert.ok(w <= cw, `page wider than the screen ${w} > ${cw}`);
    // Nothing of the form or the test chat reaches past the screen.
    const spill = await p.evaluate(() => [...document.querySelectorAll('.agents-main *')]
      .filter((e) => e.offsetParent !== null)
      .filter((e) => { const r = e.getBoundingClientRect(); return r.width > 0 && (r.right > window.innerWidth + 1 || r.left < -1); })
      .map((e) => e.outerHTML.slice(0, 60)));
    assert.deepEqual(spill, []);
    const unnamed = await p.evaluate(() => [...document.querySelectorAll('main button, main input, main select, main textarea')]
      .filter((e) => e.offsetParent !== null)
      .filter((e) => !(e.getAttribute('aria-label') || e.textContent.trim() || (e.id && document.querySelector(`label[for="${e.id}"]`)) || e.closest('label')))
      .map((e) => e.outerHTML.slice(0, 80)));
    assert.deepEqual(unnamed, []);
    await shot(p, 'agents-phone-zh');
    await p.locator('.agent-form').scrollIntoViewIfNeeded();
    await shot(p, 'agents-phone-zh-form');
    assert.deepEqual(seen, []);
  } finally {
    await t.close();
  }
});

test('no script errors, policy violations or dialogs', () => {
  assert.deepEqual(problems, []);
});
