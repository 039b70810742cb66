// The console's directory sign-in in the browser, against the real daemon and a real OpenLDAP
// (tests/e2e/ldapdir.py: Debian's slapd on a loopback port): the sign-in page offers username
// and password beside the API key, a wrong password gets a clear message, the session cookie
// is HttpOnly, Secure and SameSite=Strict (page scripts cannot read it), a chat sent from the
// page goes out with the CSRF token, a reload keeps the session, and signing out closes it on
// the daemon; a tab whose account is disabled in the directory is signed out at the next
// re-check. Also in Chinese.
//
// Screenshots go to tests/console/artifacts/ (git-ignored).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Daemon, browser, watch, shot, ROOT } from './harness.mjs';

let slapd;
let dir;
let d;
let b;

/** Start the directory; resolves with what ldapdir.py prints (url, config, users). */
function startDirectory() {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'edgeseek-slapd-'));
  // Sessions are re-checked every 2 s here, so a disabled account's tab is signed out soon.
  slapd = spawn('python3', [path.join(ROOT, 'tests', 'e2e', 'ldapdir.py'), work, '2'],
    { stdio: ['pipe', 'pipe', 'inherit'] });
  process.once('exit', () => { if (slapd.exitCode === null) slapd.kill('SIGKILL'); });
  return new Promise((resolve, reject) => {
    let out = '';
    slapd.stdout.setEncoding('utf8');
    slapd.stdout.on('data', (s) => {
      out += s;
      const nl = out.indexOf('\n');
      if (nl >= 0) resolve(JSON.parse(out.slice(0, nl)));
    });
    slapd.once('exit', (code) => reject(new Error(`ldapdir.py exited ${code}`)));
  });
}

before(async () => {
  dir = await startDirectory();
  d = await Daemon.start({ config: dir.config });
  b = await browser();
});

after(async () => {
  await b?.close();
  await d?.stop();
  if (slapd && slapd.exitCode === null) {
    const gone = new Promise((r) => slapd.once('exit', r));
    slapd.stdin.end();
    await gone;
  }
});

async function signInWith(page, user, password) {
  await page.getByLabel('Username').fill(user);
  await page.getByLabel('Password').fill(password);
  await page.locator('form.signin', { has: page.locator('#dir-user') }).locator('button[type="submit"]').click();
}

test('sign in with a directory account: cookie out of scripts\' reach, CSRF on writes, reload, sign out', async () => {
  const page = await b.context.newPage();
  const problems = watch(page);
  await page.goto(`${d.url}/`);
  // Both ways in: company account first, the API key still offered.
  await page.locator('#dir-user').waitFor();
  assert.ok(await page.locator('#key').isVisible(), 'the API key field is still there');
  await shot(page, 'ldap-signin');

  await signInWith(page, 'alice', 'not-her-password');
  await page.locator('#dir-msg.error').waitFor();
  assert.equal(await page.locator('#dir-msg').textContent(), 'Incorrect username or password.');
  assert.equal(await page.getByLabel('Password').inputValue(), '', 'the password field is cleared');

  await signInWith(page, 'alice', dir.users.alice);
  await page.locator('nav.tabs').waitFor();
  assert.equal(await page.locator('nav a[data-route="admin"]').isHidden(), true, 'finance is not admin');

  // The session is a cookie the page cannot read; nothing secret is in storage.
  const [cookie] = (await b.context.cookies(d.url)).filter((c) => c.name === 'edgeseek_session');
  assert.ok(cookie, 'the session cookie is set');
  assert.equal(cookie.httpOnly, true);
  assert.equal(cookie.secure, true);
  assert.equal(cookie.sameSite, 'Strict');
  const seen = await page.evaluate(() => ({ cookie: document.cookie, storage: JSON.stringify({ ...sessionStorage }) }));
  assert.ok(!seen.cookie.includes('edgeseek_session'), seen.cookie);
  assert.ok(!seen.storage.includes(cookie.value), 'the session id is not in sessionStorage');

  // A chat from the page goes out with the CSRF token (and no bearer key) and is answered.
  const req = page.waitForRequest((r) => r.url().endsWith('/v1/chat/completions'));
  const resp = page.waitForResponse((r) => r.url().endsWith('/v1/chat/completions'));
  await page.fill('.composer textarea', 'Hello from the directory');
  await page.keyboard.press('Enter');
  const sent = (await req).headers();
  assert.ok(sent['x-csrf-token'] && sent['x-csrf-token'].length === 64, 'CSRF header sent');
  assert.equal(sent.authorization, undefined);
  assert.equal((await resp).status(), 200);
  // The same write without the token is refused, even from the page's own origin.
  const bare = await page.evaluate(async () => (await fetch('/v1/auth/logout', { method: 'POST', credentials: 'same-origin' })).status);
  assert.equal(bare, 403);

  // A reload keeps the session (the token is asked for again, not stored).
  await page.reload();
  await page.locator('nav.tabs').waitFor();
  assert.equal(await page.locator('#dir-user').count(), 0);

  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.locator('#dir-user').waitFor();
  const old = await d.request('GET', '/v1/auth/session', { headers: { Cookie: `edgeseek_session=${cookie.value}` } });
  assert.equal(old.status, 401, 'signing out closed the session on the daemon');
  assert.deepEqual(problems, []);
  await page.close();
});

test('a tab whose account the directory disabled is signed out with a message', async () => {
  const page = await b.context.newPage();
  const problems = watch(page);
  await page.goto(`${d.url}/`);
  await signInWith(page, 'erin', dir.users.erin);
  await page.locator('nav.tabs').waitFor();
  execFileSync('ldapmodify', dir.modify, { input: dir.disable.replace('NAME', 'erin') });
  await new Promise((r) => setTimeout(r, 2500));
  // The next call the page makes finds the session ended.
  await page.locator('nav a[data-route="knowledge"]').click();
  await page.locator('#dir-msg').filter({ hasText: 'You were signed out: your session has ended.' }).waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.getItem('edgeseek.user')), null);
  assert.deepEqual(problems, []);
  await page.close();
});

test('a user in no mapped group is told so; the page speaks Chinese too', async () => {
  const zh = await browser({ locale: 'zh-CN' });
  try {
    const page = await zh.context.newPage();
    const problems = watch(page);
    await page.goto(`${d.url}/`);
    await page.getByLabel('用户名').fill('carol');
    await page.getByLabel('密码').fill(dir.users.carol);
    await page.locator('form.signin', { has: page.locator('#dir-user') }).locator('button[type="submit"]').click();
    await page.locator('#dir-msg.error').waitFor();
    assert.equal(await page.locator('#dir-msg').textContent(), '您的账号无权使用本设备，请联系管理员。');
    await shot(page, 'ldap-signin-zh');
    assert.deepEqual(problems, []);
  } finally {
    await zh.close();
  }
});
