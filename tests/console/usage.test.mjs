// The Usage page in the browser console, against the real daemon on the tiny fixture model:
// tokens per usage group as bars and tables built from GET /v1/admin/usage after real chat
// calls (numbers checked against the `usage` the API gave those calls), quota meters of a
// group with a quota, each key with its group, hidden for a chat-only key, the phone layout,
// and the Chinese UI.
//
// Screenshots go to tests/console/artifacts/ (git-ignored).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { Daemon, browser, watch, shot, MODEL, ROOT, BIN } from './harness.mjs';

let d;
let b;
let adminKey;
const given = { hr: 0, ops: 0 };

function groupKey(name, group) {
  const out = execFileSync(BIN, ['keys', 'create', '--dev', '--state-dir', d.state, '--name', name,
    '--scope', 'chat', '--group', group], { cwd: ROOT, encoding: 'utf8', env: { ...process.env, EDGESEEK_LOG: 'off' } });
  return out.trim().split('\n').pop();
}

async function chat(key) {
  const r = await d.json('POST', '/v1/chat/completions', {
    key, body: { model: MODEL, max_tokens: 4, messages: [{ role: 'user', content: 'count this' }] },
  });
  assert.equal(r.status, 200, JSON.stringify(r.json));
  return r.json.usage.total_tokens;
}

async function signIn(p, key) {
  await p.fill('#key', key);
  await p.locator('form.signin button[type="submit"]').click();
}

before(async () => {
  d = await Daemon.start({ config: '[usage.groups.hr]\ntokens_per_day = 100000\n' });
  adminKey = d.key('console-admin', 'admin');
  const hr = groupKey('hr-laptop', 'hr');
  const ops = groupKey('ops-desk', 'ops');
  for (let i = 0; i < 3; i += 1) given.hr += await chat(hr);
  given.ops += await chat(ops);
  b = await browser();
});

after(async () => {
  await b?.close();
  await d?.stop();
});

test('the Usage page shows tokens per group and key as the API counted them', async () => {
  const page = await b.context.newPage();
  const problems = watch(page);
  await page.goto(`${d.url}/#/usage`);
  await signIn(page, adminKey);
  await page.locator('nav a[data-route="usage"]').click();
  const hrBar = page.locator('.bars .bar[data-group="hr"]');
  await hrBar.waitFor();
  assert.equal(await hrBar.locator('.num').textContent(), given.hr.toLocaleString('en-US'));
  assert.equal(await page.locator('.bars .bar[data-group="ops"] .num').textContent(), given.ops.toLocaleString('en-US'));
  // hr used more than ops: its bar is the full one, drawn first.
  assert.equal(await page.locator('.bars .bar').first().getAttribute('data-group'), 'hr');
  // The group with a quota has a meter with used / limit.
  const hrRow = page.locator('table.usage-groups tr', { hasText: 'hr' });
  assert.match(await hrRow.textContent(), new RegExp(`${given.hr.toLocaleString('en-US')} / 100,000`));
  assert.equal(await hrRow.locator('meter').count(), 1);
  // Each key with its group and its own count.
  const opsRow = page.locator('table.usage-keys tr', { hasText: 'ops-desk' });
  assert.match(await opsRow.textContent(), /ops-desk · ops/);
  assert.match(await opsRow.textContent(), new RegExp(given.ops.toLocaleString('en-US')));
  // Another range: today only still has everything (all calls were made today, UTC).
  await page.selectOption('.usage select', 'today');
  await page.locator('.usage button', { hasText: 'Refresh' }).click();
  await hrBar.waitFor();
  await shot(page, 'usage-desktop');
  assert.deepEqual(problems, []);
  await page.close();
});

test('a chat-only key has no Usage page', async () => {
  const page = await b.context.newPage();
  await page.goto(`${d.url}/#/usage`);
  await signIn(page, d.key('chat-only', 'chat'));
  await page.locator('nav').waitFor();
  assert.equal(await page.locator('nav a[data-route="usage"]').isVisible(), false);
  assert.equal(await page.locator('.usage').count(), 0);
  await page.close();
});

test('phone layout and the Chinese UI', async () => {
  const phone = await browser({ locale: 'zh-CN', viewport: { width: 390, height: 844 } });
  const page = await phone.context.newPage();
  await page.goto(`${d.url}/#/usage`);
  await signIn(page, adminKey);
  await page.locator('.bars .bar[data-group="hr"]').waitFor();
  assert.equal(await page.locator('#usage-h').textContent(), '用量');
  const [w, cw] = await page.evaluate(() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]);
  assert.ok(w <= cw, `page scrolls sideways: ${w} > ${cw}`);
  await shot(page, 'usage-phone-zh');
  await phone.close();
});

test('the key form sets a usage group and token quotas, and shows the daemon\'s refusal', async () => {
  const page = await b.context.newPage();
  const problems = watch(page);
  await page.goto(`${d.url}/#/admin`);
  await signIn(page, adminKey);
  const form = page.locator('form.key-form');
  await form.waitFor();
  await form.locator('[name="name"]').fill('fin-1');
  await form.locator('[name="group"]').fill('Finance');
  await form.locator('button[type="submit"]').click();
  await page.locator('.key-form .formmsg.error').waitFor();
  assert.match(await page.locator('.key-form .formmsg').textContent(), /invalid group/);
  await form.locator('[name="group"]').fill('finance');
  await form.locator('[name="tokens_per_day"]').fill('500');
  await form.locator('button[type="submit"]').click();
  await page.locator('.secret').waitFor();
  const keys = (await d.json('GET', '/v1/admin/keys', { key: adminKey })).json.data;
  const k = keys.find((x) => x.name === 'fin-1');
  assert.equal(k.group, 'finance');
  assert.equal(k.tokens_per_day, 500);
  assert.equal(k.tokens_per_month, null);
  const row = page.locator('.keys tr', { hasText: 'fin-1' });
  await row.waitFor();
  assert.match(await row.textContent(), /500 tokens\/day, group finance/);
  assert.deepEqual(problems, []);
  await page.close();
});
