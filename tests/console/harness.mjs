// Test harness: the real `edgeseek serve --dev` on 127.0.0.1 with an ephemeral port and a
// temporary state dir, keys made with the real CLI, HTTPS requests that trust the generated CA,
// and Debian's chromium driven by playwright-core with a fresh profile.

import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const BIN = process.env.EDGESEEK_BIN || path.join(ROOT, 'target', 'debug', 'edgeseek');
export const MODEL_DIR = path.join(ROOT, 'tests', 'fixtures', 'tiny-qwen2-genai');
export const MODEL = path.basename(MODEL_DIR);
export const ARTIFACTS = path.join(ROOT, 'tests', 'console', 'artifacts');
export const CHROMIUM = process.env.EDGESEEK_CHROMIUM || '/usr/bin/chromium';
/** The fixture's EOS token: banned where a test needs a generation that runs to max_tokens. */
export const EOS = '1536';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export class Daemon {
  /** `model`: a model directory other than the fixture (e.g. a copy with another template), or
   * a list of them (several models served at once). */
  static async start({ config, model = MODEL_DIR } = {}) {
    const d = new Daemon();
    d.state = fs.mkdtempSync(path.join(os.tmpdir(), 'edgeseek-console-'));
    const args = ['serve', '--dev', '--state-dir', d.state, '--listen', '127.0.0.1:0'];
    for (const m of Array.isArray(model) ? model : [model]) args.push('--model', m);
    if (config) {
      const f = path.join(d.state, 'edgeseek.toml');
      fs.writeFileSync(f, config);
      args.push('--config', f);
    }
    const env = { ...process.env, EDGESEEK_LOG: process.env.EDGESEEK_TEST_LOG || 'warn' };
    delete env.ORT_DYLIB_PATH;
    d.log = fs.openSync(path.join(d.state, 'serve.log'), 'w');
    d.proc = spawn(BIN, args, { cwd: ROOT, env, stdio: ['ignore', 'pipe', d.log] });
    d.exited = new Promise((r) => d.proc.once('exit', r));
    // Never leave a daemon behind, even when a test run dies.
    process.once('exit', () => { if (d.proc.exitCode === null) d.proc.kill('SIGKILL'); });
    let out = '';
    d.proc.stdout.setEncoding('utf8');
    d.proc.stdout.on('data', (s) => { out += s; });
    const deadline = Date.now() + 60_000;
    while (!/listening on (https:\/\/\S+)/.test(out) || !/tls fingerprint sha256 (\S+)/.test(out)) {
      if (d.proc.exitCode !== null) throw new Error(`serve exited ${d.proc.exitCode}: ${d.logs()}`);
      if (Date.now() > deadline) throw new Error(`serve printed no address: ${d.logs()}`);
      await sleep(50);
    }
    d.url = /listening on (https:\/\/\S+)/.exec(out)[1];
    d.fingerprint = /tls fingerprint sha256 (\S+)/.exec(out)[1];
    d.ca = fs.readFileSync(path.join(d.state, 'tls', 'ca.pem'));
    await d.waitReady();
    return d;
  }

  logs() {
    try { return fs.readFileSync(path.join(this.state, 'serve.log'), 'utf8'); } catch { return ''; }
  }

  async waitReady() {
    const deadline = Date.now() + 60_000;
    while (Date.now() < deadline) {
      try { if ((await this.request('GET', '/readyz')).status === 200) return; } catch { /* not up yet */ }
      await sleep(100);
    }
    throw new Error(`not ready: ${this.logs()}`);
  }

  /** A new API key from `edgeseek keys create` (through the running daemon's admin socket). */
  key(name, scope = 'chat') {
    const out = execFileSync(BIN, ['keys', 'create', '--dev', '--state-dir', this.state, '--name', name, '--scope', scope],
      { cwd: ROOT, encoding: 'utf8', env: { ...process.env, EDGESEEK_LOG: 'off' } });
    return out.trim().split('\n').pop();
  }

  /** One HTTPS request trusting only the daemon's CA; resolves {status, headers, body: Buffer}. */
  request(method, p, { headers = {}, body, key } = {}) {
    const u = new URL(p, this.url);
    const h = { ...headers };
    if (key) h.Authorization = `Bearer ${key}`;
    let data;
    if (body !== undefined) {
      data = Buffer.isBuffer(body) ? body : Buffer.from(JSON.stringify(body));
      h['Content-Type'] = h['Content-Type'] || 'application/json';
      h['Content-Length'] = data.length;
    }
    return new Promise((resolve, reject) => {
      // The path goes out as written (no URL normalisation), so tests can send odd ones.
      const req = https.request({ method, hostname: u.hostname, port: u.port, path: p.startsWith('/') ? p : u.pathname + u.search, headers: h, ca: this.ca, agent: false },
        (res) => {
          const chunks = [];
          res.on('data', (c) => chunks.push(c));
          res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
          res.on('error', reject);
        });
      req.on('error', reject);
      req.setTimeout(120_000, () => req.destroy(new Error('request timed out')));
      if (data) req.write(data);
      req.end();
    });
  }

  async json(method, p, opts) {
    const r = await this.request(method, p, opts);
    return { status: r.status, headers: r.headers, json: r.body.length ? JSON.parse(r.body.toString('utf8')) : null };
  }

  /** A counter or gauge from /metrics (no key needed on loopback). */
  async metric(name) {
    const text = (await this.request('GET', '/metrics')).body.toString('utf8');
    const line = text.split('\n').find((l) => l.startsWith(`${name} `));
    if (!line) throw new Error(`${name} not in /metrics`);
    return Number(line.split(' ').pop());
  }

  async stop() {
    if (this.proc.exitCode === null) {
      this.proc.kill('SIGTERM');
      const t = setTimeout(() => this.proc.kill('SIGKILL'), 20_000);
      await this.exited;
      clearTimeout(t);
    }
    fs.closeSync(this.log);
  }
}

/**
 * Debian's chromium, headless, with a fresh profile directory. The daemon's certificate comes
 * from its own dev CA, which this throwaway profile does not trust, so certificate errors are
 * ignored for it (the Node side of the tests verifies TLS against the CA).
 */
export async function browser({ locale = 'en-US', viewport = { width: 1280, height: 860 } } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'edgeseek-chromium-'));
  const context = await chromium.launchPersistentContext(dir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    ignoreHTTPSErrors: true,
    locale,
    viewport,
  });
  const close = async () => {
    await context.close();
    fs.rmSync(dir, { recursive: true, force: true });
  };
  return { context, close };
}

/** Fail on what a page must never do: script errors, CSP violations, dialogs. */
export function watch(page) {
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy|Refused to/i.test(m.text())) problems.push(`console: ${m.text()}`);
  });
  page.on('dialog', (d) => { problems.push(`dialog (${d.type()}): ${d.message()}`); d.dismiss().catch(() => {}); });
  return problems;
}

export async function shot(page, name) {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`) });
}

/** Daemon config for tests that need room for a background load next to the browser's request. */
export const ROOMY = '[engine]\nmax_batch = 16\n';

/**
 * Keep the engine busy with `n` long sequences (EOS banned, most of the fixture's context; top-20
 * logprobs make every step heavier) so that a request sent meanwhile shares a full batch and
 * streams for a few seconds instead of a fraction of one — long enough to watch it stream and to
 * press Stop. Resolves once the engine runs them, with `done`: the load's response, read to its
 * end. Use with a daemon started with [ROOMY].
 */
export async function load(daemon, key, n = 15) {
  const done = daemon.request('POST', '/v1/chat/completions', {
    key,
    body: {
      model: MODEL, messages: [{ role: 'user', content: 'background load' }], max_tokens: 440, n,
      min_p: 0, logit_bias: { [EOS]: -100 }, stream: true, logprobs: true, top_logprobs: 20,
    },
  });
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline && (await daemon.metric('edgeseek_active_sequences')) < n) await sleep(20);
  return { done };
}

/**
 * The random fixture model may sample EOS at any step; while `page` is open, its chat requests go
 * out with EOS banned so an answer runs to max_tokens (the request is otherwise the console's own).
 */
export async function banEos(page) {
  await page.route('**/v1/chat/completions', (route) => {
    const body = route.request().postDataJSON();
    route.continue({ postData: JSON.stringify({ ...body, min_p: 0, logit_bias: { [EOS]: -100 } }) });
  });
}
