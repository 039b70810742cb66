// Tool calls in the browser console, against the real daemon: the Tools (JSON) setting and its
// checks, each call shown as a collapsible step (streamed and whole answers, two parallel calls),
// the user's results sent back as `role: "tool"` messages, and the phone layout.
//
// The random fixture model never writes a tool call of its own, so the daemon serves a copy of
// it (made in a temporary directory by `toolModel` below) whose chat template renders `tools`
// and teaches Hermes-style `<tool_call>` blocks, and whose added token 1551 (unused by that
// template) decodes to two complete calls followed by `#END#`. The tests' requests go out as
// the console builds them, plus `logit_bias` forcing token 1551 and `stop: ["#END#"]`: the model
// writes that one token, the daemon's own tool-call reader turns it into two OpenAI calls and
// ends the answer with `finish_reason: "tool_calls"`. Every response the page renders is the
// daemon's, read from the wire; the streamed test only re-cuts the arguments the daemon sent in
// one piece into several (as a model writing token by token sends them), to check that the page
// joins the pieces as the OpenAI SDKs do.
//
// Screenshots go to tests/console/artifacts/ (git-ignored).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Daemon, browser, watch, shot, MODEL_DIR } from './harness.mjs';

const CALL_TOKEN = '1551';
const END = '#END#';
const CALLS = [
  { name: 'get_weather', arguments: { city: 'Oslo', unit: 'celsius' } },
  { name: 'get_time', arguments: { zone: 'Europe/Oslo' } },
];
const TOOLS = [
  { type: 'function', function: { name: 'get_weather', description: 'Weather in a city', parameters: { type: 'object', properties: { city: { type: 'string' }, unit: { type: 'string' } }, required: ['city'] } } },
  { type: 'function', function: { name: 'get_time', parameters: { type: 'object', properties: { zone: { type: 'string' } } } } },
];

// Short enough for the fixture's 512-token context with both tools, a call turn and results.
const TEMPLATE = `{%- if tools %}{{ 'Tools:' }}{%- for tool in tools %}{{ '\\n' }}{{ tool | tojson }}{%- endfor %}{{ '\\nCall as <tool_call>{"name": …, "arguments": {…}}</tool_call>\\n' }}{%- endif %}
{%- for message in messages %}
{%- if message.role == 'assistant' and message.tool_calls %}{{ 'assistant:' }}{% if message.content %}{{ message.content }}{% endif %}{%- for call in message.tool_calls %}{{ '<tool_call>' + call.function.name + '</tool_call>' }}{%- endfor %}{{ '\\n' }}
{%- elif message.role == 'tool' %}{{ 'tool:' + message.content + '\\n' }}
{%- else %}{{ message.role + ':' + message.content + '\\n' }}{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{ 'assistant:' }}{%- endif %}
`;

/** The fixture model copied with the tool template and token 1551 decoding to two calls. */
function toolModel() {
  const dir = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'edgeseek-tools-model-')), 'tiny-qwen2-tools');
  fs.cpSync(MODEL_DIR, dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'chat_template.jinja'), TEMPLATE);
  const text = `${CALLS.map((c) => `<tool_call>\n${JSON.stringify({ name: c.name, arguments: c.arguments })}\n</tool_call>`).join('\n')}${END}`;
  const tokPath = path.join(dir, 'tokenizer.json');
  const tok = JSON.parse(fs.readFileSync(tokPath, 'utf8'));
  const added = tok.added_tokens.find((a) => String(a.id) === CALL_TOKEN);
  assert.equal(added.special, false);
  added.content = text;
  fs.writeFileSync(tokPath, JSON.stringify(tok));
  const cfgPath = path.join(dir, 'tokenizer_config.json');
  const cfg = JSON.parse(fs.readFileSync(cfgPath, 'utf8'));
  cfg.added_tokens_decoder[CALL_TOKEN].content = text;
  fs.writeFileSync(cfgPath, JSON.stringify(cfg));
  return dir;
}

let d;
let key;
let b;
let page;
let problems;
let modelDir;

/**
 * Route the page's chat requests to the daemon: a request whose last message is the user's gets
 * the forced call (see the top of the file), others a short answer. `log` gets each request
 * body as the console sent it and the daemon's response text; `edit(text, body)` may change the
 * response before the page sees it.
 */
async function intercept(p, log, edit) {
  await p.route('**/v1/chat/completions', async (route) => {
    const body = route.request().postDataJSON();
    const last = body.messages[body.messages.length - 1];
    const extra = last.role === 'user' ? { logit_bias: { [CALL_TOKEN]: 100 }, stop: [END] } : { max_tokens: 6 };
    const response = await route.fetch({ postData: JSON.stringify({ ...body, ...extra }) });
    const text = await response.text();
    log.push({ body, text });
    await route.fulfill({ response, body: edit ? edit(text, body) : text });
  });
}

/** The SSE events of a streamed response, parsed (without `[DONE]`). */
const events = (text) => text.split('\n\n').map((e) => e.replace(/^data: /, '')).filter((e) => e && e !== '[DONE]').map((e) => JSON.parse(e));

/** Each tool_calls delta carrying arguments cut into 4-character pieces (same order, same text). */
function recut(text) {
  const out = [];
  for (const e of events(text)) {
    const tcs = e.choices?.[0]?.delta?.tool_calls;
    const args = tcs && tcs.length === 1 && !tcs[0].id && tcs[0].function?.arguments;
    if (!args) { out.push(e); continue; }
    for (let i = 0; i < args.length; i += 4) {
      out.push({ ...e, choices: [{ ...e.choices[0], delta: { tool_calls: [{ index: tcs[0].index, function: { arguments: args.slice(i, i + 4) } }] } }] });
    }
  }
  return `${out.map((e) => `data: ${JSON.stringify(e)}\n\n`).join('')}data: [DONE]\n\n`;
}

async function signIn(p) {
  await p.goto(`${d.url}/`);
  await p.fill('#key', key);
  await p.locator('form.signin button[type="submit"]').click();
  await p.locator('.chat').waitFor();
  await p.locator('.toolbar select option', { hasText: 'tiny-qwen2-tools' }).waitFor({ state: 'attached' });
}

async function openSettings(p) {
  const btn = p.locator('.toolbar button', { hasText: 'Settings' });
  if ((await btn.getAttribute('aria-expanded')) !== 'true') await btn.click();
}

async function closeSettings(p) {
  const btn = p.locator('.toolbar button', { hasText: 'Settings' });
  if ((await btn.getAttribute('aria-expanded')) === 'true') await btn.click();
}

async function setTools(p, text) {
  await openSettings(p);
  await p.fill('.settings [name="tools"]', text);
}

async function send(p, text) {
  await p.fill('.composer textarea', text);
  await p.keyboard.press('Enter');
}

const idle = (p) => p.locator('.composer .send').waitFor({ state: 'visible', timeout: 60_000 });

/** Name, state and argument text of every step on the page. */
function steps(p) {
  return p.locator('.tool-step').evaluateAll((els) => els.map((e) => ({
    id: e.dataset.callId,
    state: e.dataset.state,
    name: e.querySelector('.tool-name').textContent,
    args: e.querySelector('.tool-args').textContent,
    raw: !e.querySelector('.tool-raw').hidden,
  })));
}

const pretty = (v) => JSON.stringify(v, null, 2);

before(async () => {
  modelDir = toolModel();
  d = await Daemon.start({ model: modelDir });
  key = d.key('console-tools', 'chat');
  b = await browser();
  page = await b.context.newPage();
  problems = watch(page);
});

after(async () => {
  await b?.close();
  await d?.stop();
  if (modelDir) fs.rmSync(path.dirname(modelDir), { recursive: true, force: true });
});

test('an invalid Tools setting shows what is wrong and sends nothing', async () => {
  const log = [];
  await intercept(page, log);
  await signIn(page);
  const error = page.locator('.settings .formmsg.error');
  for (const [text, want] of [
    ['[{"type": "function", "function": {"name": "get_weather"}', /not valid JSON/],
    ['{"type": "function", "function": {"name": "get_weather"}}', /non-empty JSON array/],
    ['[{"type": "function", "function": {"name": "ok"}}, {"type": "function", "function": {"description": "no name"}}]', /item 1 must look like/],
    ['[{"type": "function", "function": {"name": "f", "parameters": [1]}}]', /item 0: function.parameters must be a JSON object/],
  ]) {
    await setTools(page, text);
    assert.match(await error.textContent(), want);
    assert.equal(await page.locator('.settings [name="tools"]').getAttribute('aria-invalid'), 'true');
    await closeSettings(page);
    await send(page, 'Weather in Oslo?');
    // Sending opens the settings on the error and keeps the message.
    await page.locator('.settings').waitFor({ state: 'visible' });
    assert.match(await error.textContent(), want);
    await page.locator('.toast-item', { hasText: want }).first().waitFor();
    assert.equal(await page.inputValue('.composer textarea'), 'Weather in Oslo?');
    assert.equal(await page.locator('.msg.user').count(), 0);
  }
  await shot(page, 'tools-invalid');
  await page.waitForTimeout(300);
  assert.equal(log.length, 0, 'no chat request went out');
  // Fixed, the error goes and the field is valid.
  await setTools(page, JSON.stringify(TOOLS));
  assert.equal(await error.textContent(), '');
  assert.equal(await page.locator('.settings [name="tools"]').getAttribute('aria-invalid'), null);
  await closeSettings(page);
  await page.fill('.composer textarea', '');
  await page.unroute('**/v1/chat/completions');
  // The error toasts go by themselves (kept out of the next screenshots).
  await page.waitForFunction(() => !document.querySelector('.toast-item'), null, { timeout: 10_000 });
});

test('streamed: two parallel calls become steps; results go back as tool messages and the chat goes on', async () => {
  const log = [];
  await intercept(page, log, (text, body) => (body.messages.at(-1).role === 'user' ? recut(text) : text));
  await page.locator('.convs button', { hasText: 'New chat' }).click();
  await send(page, 'Weather and time in Oslo?');
  await idle(page);

  // What the daemon sent: two calls as deltas, then finish_reason tool_calls.
  assert.equal(log.length, 1);
  const sent = log[0].body;
  assert.deepEqual(sent.tools, TOOLS);
  assert.equal(sent.stream, true);
  const evs = events(log[0].text);
  const firsts = evs.flatMap((e) => e.choices?.[0]?.delta?.tool_calls || []).filter((tc) => tc.id);
  assert.deepEqual(firsts.map((tc) => [tc.index, tc.function.name]), [[0, 'get_weather'], [1, 'get_time']]);
  assert.equal(evs.findLast((e) => e.choices?.[0]?.finish_reason).choices[0].finish_reason, 'tool_calls');
  const ids = firsts.map((tc) => tc.id);
  assert.ok(ids.every((id) => /^call_/.test(id)) && ids[0] !== ids[1], ids.join());

  // On the page: one step per call, pretty arguments, waiting for a result.
  assert.deepEqual(await steps(page), CALLS.map((c, i) => ({ id: ids[i], state: 'waiting', name: c.name, args: pretty(c.arguments), raw: false })));
  const msg = page.locator('.msg.assistant').last();
  assert.match(await msg.locator('.status').textContent(), /called 2 tools/);
  assert.deepEqual(await msg.locator('.tool-step .badge').allTextContents(), ['waiting for result', 'waiting for result']);
  await shot(page, 'tools-streamed-waiting');

  // Collapsing: the summary hides and shows the step's body.
  const first = page.locator('.tool-step').first();
  await first.locator('summary').click();
  assert.equal(await first.locator('.tool-args').isVisible(), false);
  assert.equal(await first.evaluate((e) => e.open), false);
  await first.locator('summary').click();
  assert.equal(await first.locator('.tool-args').isVisible(), true);

  // The first result alone sends nothing (the answer has two calls).
  await first.locator('textarea').fill('sunny, 21 °C');
  await first.locator('button', { hasText: 'Send result' }).click();
  await page.waitForFunction(() => document.querySelector('.tool-step').dataset.state === 'done');
  assert.equal(await first.locator('.tool-result').textContent(), 'sunny, 21 °C');
  assert.equal(await first.locator('.tool-form').isVisible(), false);
  await page.waitForTimeout(300);
  assert.equal(log.length, 1);

  // The second (Enter sends) continues the conversation with both results.
  const second = page.locator('.tool-step').nth(1);
  assert.equal(await page.evaluate(() => document.activeElement.name), 'tool_result', 'focus moved to the next result');
  await second.locator('textarea').fill('12:00');
  await second.locator('textarea').press('Enter');
  await page.locator('.msg.assistant').nth(1).waitFor();
  await idle(page);
  assert.equal(log.length, 2);
  const follow = log[1].body;
  assert.deepEqual(follow.messages, [
    { role: 'user', content: 'Weather and time in Oslo?' },
    {
      role: 'assistant', content: null,
      tool_calls: CALLS.map((c, i) => ({ id: ids[i], type: 'function', function: { name: c.name, arguments: JSON.stringify(c.arguments) } })),
    },
    { role: 'tool', tool_call_id: ids[0], content: 'sunny, 21 °C' },
    { role: 'tool', tool_call_id: ids[1], content: '12:00' },
  ]);
  assert.deepEqual(follow.tools, TOOLS);
  assert.ok(JSON.parse(log[1].text.split('\n\n')[0].replace(/^data: /, '')).choices, 'the daemon answered the follow-up');
  assert.deepEqual((await steps(page)).map((s) => s.state), ['done', 'done']);
  assert.deepEqual(await page.locator('.tool-step .tool-result').allTextContents(), ['sunny, 21 °C', '12:00']);
  assert.equal(await page.locator('.tool-step .tool-form:visible').count(), 0);
  // The calls' answer no longer asks for results.
  assert.equal(await page.locator('.msg.assistant').first().locator('.status').textContent(), '');
  await shot(page, 'tools-streamed-answered');

  // Kept in IndexedDB: after a reload the steps come back with their results.
  await page.reload();
  await page.locator('.tool-step').first().waitFor();
  assert.deepEqual((await steps(page)).map((s) => [s.id, s.state]), [[ids[0], 'done'], [ids[1], 'done']]);
  assert.equal(await page.locator('.msg.assistant').count(), 2);
  await page.unroute('**/v1/chat/completions');
});

test('whole responses (streaming off): message.tool_calls as steps; arguments that are not JSON shown raw', async () => {
  const log = [];
  let breakArgs = false;
  // The daemon only sends calls whose arguments are a JSON object; to see the raw display, one
  // answer has its second call's arguments cut short on the way to the page.
  await intercept(page, log, (text) => {
    if (!breakArgs) return text;
    const r = JSON.parse(text);
    const a = r.choices[0].message.tool_calls[1].function;
    a.arguments = a.arguments.slice(0, -2);
    return JSON.stringify(r);
  });
  await page.locator('.convs button', { hasText: 'New chat' }).click();
  await openSettings(page);
  await page.locator('.settings [name="stream"]').uncheck();
  await closeSettings(page);
  await send(page, 'Weather and time in Oslo?');
  await idle(page);
  assert.equal(log.length, 1);
  assert.equal(log[0].body.stream, false);
  assert.equal(log[0].body.stream_options, undefined);
  const r = JSON.parse(log[0].text);
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.choices[0].finish_reason, 'tool_calls');
  const calls = r.choices[0].message.tool_calls;
  assert.deepEqual(calls.map((c) => [c.type, c.function.name, JSON.parse(c.function.arguments)]), CALLS.map((c) => ['function', c.name, c.arguments]));
  assert.deepEqual(await steps(page), calls.map((c) => ({ id: c.id, state: 'waiting', name: c.function.name, args: pretty(JSON.parse(c.function.arguments)), raw: false })));
  await shot(page, 'tools-whole-waiting');

  breakArgs = true;
  await page.locator('.msg.assistant').last().locator('button', { hasText: 'Regenerate' }).click();
  await page.waitForFunction(() => document.querySelectorAll('.tool-raw:not([hidden])').length === 1);
  await idle(page);
  const broken = JSON.parse(log[1].text).choices[0].message.tool_calls[1].function.arguments.slice(0, -2);
  const shown = await steps(page);
  assert.equal(shown.length, 2);
  assert.deepEqual([shown[1].args, shown[1].raw, shown[0].raw], [broken, true, false]);
  assert.match(await page.locator('.tool-step').nth(1).locator('.tool-raw').textContent(), /Not valid JSON/);
  await page.locator('.tool-step').nth(1).scrollIntoViewIfNeeded();
  await shot(page, 'tools-whole-raw');

  // A new message instead of results: the unanswered calls stay out of the request (each call
  // sent needs its tool message), and their steps no longer ask for a result.
  breakArgs = false;
  await send(page, 'Never mind.');
  await page.locator('.msg.assistant').nth(1).waitFor();
  await idle(page);
  assert.equal(log.length, 3);
  assert.deepEqual(log[2].body.messages, [{ role: 'user', content: 'Weather and time in Oslo?' }, { role: 'user', content: 'Never mind.' }]);
  const old = page.locator('.msg.assistant').first();
  assert.deepEqual(await old.locator('.tool-step').evaluateAll((els) => els.map((e) => e.dataset.state)), ['unanswered', 'unanswered']);
  assert.deepEqual(await old.locator('.tool-step .badge').allTextContents(), ['no result', 'no result']);
  assert.equal(await old.locator('.tool-form:visible').count(), 0);
  assert.deepEqual((await page.locator('.msg.assistant').last().locator('.tool-step').evaluateAll((els) => els.map((e) => e.dataset.state))), ['waiting', 'waiting']);
  await openSettings(page);
  await page.locator('.settings [name="stream"]').check();
  await closeSettings(page);
  await page.unroute('**/v1/chat/completions');
});

test('phone-sized screen: steps and the result box fit without horizontal overflow', async () => {
  const t = await browser({ viewport: { width: 375, height: 740 } });
  try {
    const p = await t.context.newPage();
    const seen = watch(p);
    const log = [];
    await intercept(p, log);
    await signIn(p);
    await setTools(p, JSON.stringify(TOOLS));
    await p.waitForTimeout(200);
    const overflow = () => p.evaluate(() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]);
    let [w, cw] = await overflow();
    assert.ok(w <= cw, `settings: page wider than the screen ${w} > ${cw}`);
    await shot(p, 'tools-phone-settings');
    await closeSettings(p);
    await send(p, 'Weather and time in Oslo?');
    await idle(p);
    assert.equal(await p.locator('.tool-step').count(), 2);
    [w, cw] = await overflow();
    assert.ok(w <= cw, `chat: page wider than the screen ${w} > ${cw}`);
    // Nothing in a step reaches past the message list.
    const spill = await p.evaluate(() => {
      const box = document.querySelector('.messages').getBoundingClientRect();
      return [...document.querySelectorAll('.tool-step, .tool-step *')]
        .filter((e) => e.offsetParent !== null)
        .filter((e) => { const r = e.getBoundingClientRect(); return r.right > box.right + 1 || r.left < box.left - 1; })
        .map((e) => e.outerHTML.slice(0, 60));
    });
    assert.deepEqual(spill, []);
    // Every control in the steps has a name.
    const unnamed = await p.evaluate(() => [...document.querySelectorAll('.tool-step button, .tool-step textarea')]
      .filter((e) => !(e.getAttribute('aria-label') || e.textContent.trim() || document.querySelector(`label[for="${e.id}"]`)))
      .map((e) => e.outerHTML.slice(0, 80)));
    assert.deepEqual(unnamed, []);
    await shot(p, 'tools-phone');
    assert.deepEqual(seen, []);
  } finally {
    await t.close();
  }
});

test('no script errors, policy violations or dialogs', () => {
  assert.deepEqual(problems, []);
});
