"""Faults: kill -9 during ingest, key creation and config reload; disk full during ingest and
key creation; a worst-case upload (a text without whitespace or sentence ends).

Pass, for every kill: the daemon starts again on the same state directory (the database
opens), every key whose creation was acknowledged authenticates, and nothing acknowledged is
lost. Disk full: the client gets a clear error (an HTTP error with an OpenAI-style error body,
or a one-line CLI error), never a dropped connection or a dead daemon; nothing acknowledged is
lost; once space is freed the daemon serves again without a restart, and the database opens
after a kill.
"""

import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx

from daemon import ROOT, Daemon, cli
from report import Row


def create_key(state, name):
    """`edgeseek keys create` (over the admin socket while the daemon runs). Returns the
    secret if the creation was acknowledged, else None, and the CLI's error line."""
    try:
        p = cli("keys", "create", "--dev", "--state-dir", str(state), "--name", name,
                "--scope", "chat", "--json", timeout=30)
    except subprocess.TimeoutExpired:
        return None, "timed out"
    if p.returncode == 0:
        return json.loads(p.stdout)["secret"], ""
    return None, p.stderr.strip()


def keys_authenticate(d, secrets):
    """The acknowledged keys that the daemon refuses (should be none)."""
    bad = []
    with d.client() as c:
        for name, secret in secrets.items():
            r = c.get("/v1/models", headers={"Authorization": f"Bearer {secret}"})
            if r.status_code != 200:
                bad.append(f"{name}: HTTP {r.status_code}")
    return bad


def start(state, config=""):
    d = Daemon(state, config)
    d.wait_ready()
    return d


def kill_during_key_creation(tmp, iterations, rng):
    state = tmp / "keys-kill"
    acked, problems, attempts, refused = {}, [], 0, {}
    t0 = time.time()
    for it in range(iterations):
        try:
            d = start(state)
        except RuntimeError as e:
            problems.append(f"iteration {it}: restart failed: {str(e)[-300:]}")
            break
        problems += [f"iteration {it}: {b}" for b in keys_authenticate(d, acked)]
        stop = threading.Event()

        def creator(it=it, who=0):
            nonlocal attempts
            n = 0
            while not stop.is_set():
                name = f"k{it}-{who}-{n}"
                n += 1
                attempts += 1
                secret, err = create_key(state, name)
                if secret:
                    acked[name] = secret
                else:
                    line = (err.splitlines() or ["?"])[-1][:100]
                    refused[line] = refused.get(line, 0) + 1

        ts = [threading.Thread(target=creator, kwargs={"who": w}) for w in range(2)]
        for t in ts:
            t.start()
        time.sleep(rng.uniform(0.05, 1.5))
        stop.set()
        d.kill9()
        for t in ts:
            t.join(timeout=60)
    try:
        d = start(state)
        problems += [f"final: {b}" for b in keys_authenticate(d, acked)]
        listed = cli("keys", "list", "--dev", "--state-dir", str(state), "--json")
        if listed.returncode != 0:
            problems.append(f"keys list failed: {listed.stderr.strip()}")
        d.stop()
    except RuntimeError as e:
        problems.append(f"final restart failed: {str(e)[-300:]}")
    return Row("faults", "kill -9 during key creation (`keys create` over the admin socket)",
               f"{iterations} kills, 2 creating clients",
               "restarts; every acknowledged key authenticates",
               f"{len(acked)} keys acknowledged of {attempts} attempts (others: "
               f"{'; '.join(f'{n} x {m}' for m, n in sorted(refused.items(), key=lambda x: -x[1])[:2])}), "
               f"{len(problems)} problems{': ' + '; '.join(problems[:3]) if problems else ''}; "
               f"{time.time() - t0:.0f} s", not problems)


def kill_during_reload(tmp, iterations, rng):
    state = tmp / "hup-kill"
    problems, hups, probe_fail, probe_n = [], 0, [], 0
    secret = None
    t0 = time.time()
    configs = ["[server]\nmax_connections = 64\n", "[server]\nmax_connections = 65\n"]
    for it in range(iterations):
        try:
            d = start(state, configs[0])
        except RuntimeError as e:
            problems.append(f"iteration {it}: restart failed: {str(e)[-300:]}")
            break
        if secret is None:
            secret = d.key("hup", "chat")
        problems += [f"iteration {it}: {b}" for b in keys_authenticate(d, {"hup": secret})]
        stop = threading.Event()

        def hupper(d=d):
            nonlocal hups
            i = 0
            while not stop.is_set():
                # Rewrite the config (atomically, as an editor or config tool would) and reload.
                tmpcfg = d.config_path.with_suffix(".new")
                tmpcfg.write_text(configs[i % 2])
                os.replace(tmpcfg, d.config_path)
                i += 1
                try:
                    os.kill(d.pid, signal.SIGHUP)
                    hups += 1
                except ProcessLookupError:
                    return
                time.sleep(0.02)

        def prober(d=d):
            nonlocal probe_n
            with d.client(timeout=10, headers={"Authorization": f"Bearer {secret}"}) as c:
                while not stop.is_set():
                    try:
                        r = c.get("/v1/models")
                        probe_n += 1
                        if r.status_code != 200:
                            probe_fail.append(f"HTTP {r.status_code}")
                    except httpx.HTTPError:
                        if not stop.is_set():
                            probe_fail.append("transport error")
                    time.sleep(0.02)

        ts = [threading.Thread(target=hupper), threading.Thread(target=prober)]
        for t in ts:
            t.start()
        time.sleep(rng.uniform(0.2, 1.5))
        stop.set()
        d.kill9()
        for t in ts:
            t.join(timeout=30)
    try:
        d = start(state)
        problems += [f"final: {b}" for b in keys_authenticate(d, {"hup": secret})]
        d.stop()
    except RuntimeError as e:
        problems.append(f"final restart failed: {str(e)[-300:]}")
    if probe_fail:
        problems.append(f"{len(probe_fail)} of {probe_n} requests during reloads failed "
                        f"({', '.join(sorted(set(probe_fail))[:3])})")
    return Row("faults", "SIGHUP storm (config rewritten + reload every 20 ms), then kill -9",
               f"{iterations} kills", "requests during reloads succeed; restarts; key authenticates",
               f"{hups} reloads, {probe_n} requests during them, {len(problems)} problems"
               f"{': ' + '; '.join(problems[:3]) if problems else ''}; {time.time() - t0:.0f} s",
               not problems)


def kill_during_ingest(iterations):
    """The knowledge base's own kill -9 test (scripts/kb-crash-test), a few iterations."""
    t0 = time.time()
    p = subprocess.run([str(ROOT / "scripts" / "kb-crash-test"), "--iterations", str(iterations)],
                       cwd=ROOT, capture_output=True, text=True, timeout=60 + 30 * iterations)
    summary = {}
    for line in p.stdout.splitlines():
        if line.startswith("{"):
            try:
                summary = json.loads(line)
            except ValueError:
                pass
    detail = (f"{summary.get('acknowledged_operations', '?')} acknowledged operations, "
              f"{summary.get('in_flight_at_kill', '?')} in flight at a kill, "
              f"{summary.get('lost_or_partial', '?')} lost or partial")
    if p.returncode != 0:
        detail += "; " + "; ".join(p.stderr.strip().splitlines()[-3:])
    return Row("faults", "kill -9 during ingest (scripts/kb-crash-test)",
               f"{iterations} kills, 3 uploading clients",
               "every acknowledged document present and whole",
               detail + f"; {time.time() - t0:.0f} s", p.returncode == 0)


def openai_error(r):
    """Whether a response is an error with an OpenAI-style body."""
    try:
        e = r.json()["error"]
        return isinstance(e.get("message"), str) and e["message"] != "" and "type" in e
    except (ValueError, KeyError, TypeError, AttributeError):
        return False


def kb_collection(c, name):
    """Wait (up to 120 s) for the knowledge base to open, then create collection `name`."""
    deadline = time.time() + 120
    while c.get("/v1/kb/collections").status_code != 200:
        if time.time() > deadline:
            raise RuntimeError("knowledge base not ready")
        time.sleep(0.1)
    c.post("/v1/kb/collections", json={"name": name})


def disk_full(tmp, size_mib):
    """State directory on a small tmpfs; fill it with a ballast file, then ingest documents
    and create keys until the disk is full; free the ballast; check service and durability."""
    mnt = tmp / "diskfull"
    mnt.mkdir(parents=True, exist_ok=True)
    m = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if m.returncode != 0:
        return [Row("faults", "disk full (tmpfs state dir)", "", "", f"cannot mount tmpfs: "
                    f"{m.stderr.strip()} (needs root)", False)]
    state = mnt / "state"
    problems_ingest, problems_keys = [], []
    acked_docs, acked_keys, errors_seen, key_errors = {}, {}, [], []
    d = None
    restarted = False
    try:
        d = start(state)
        admin = d.key("admin", "admin")
        h = {"Authorization": f"Bearer {admin}"}
        with d.client(timeout=60, headers=h) as c:
            kb_collection(c, "full")
            # Ballast: all free space but 1 MiB, so the next writes hit ENOSPC soon.
            st = os.statvfs(mnt)
            free = st.f_bavail * st.f_frsize
            ballast = mnt / "ballast"
            with open(ballast, "wb") as f:
                f.write(b"\0" * max(0, free - (1 << 20)))
            rng = random.Random(7)
            word = lambda: "".join(rng.choice("abcdefghij") for _ in range(8))  # noqa: E731
            full = False
            for i in range(400):
                text = f"# doc {i}\n\n" + " ".join(word() for _ in range(1000)) + f"\nmarker-{i}\n"
                try:
                    r = c.post("/v1/kb/collections/full/documents", params={"filename": f"d{i}.md"},
                               content=text.encode(), headers={"Content-Type": "text/markdown"})
                except httpx.HTTPError as e:
                    problems_ingest.append(f"upload {i}: {type(e).__name__} (no answer)")
                    break
                if r.status_code == 201:
                    acked_docs[f"d{i}.md"] = f"marker-{i}"
                    continue
                full = True
                if r.status_code != 507:
                    problems_ingest.append(f"upload {i}: HTTP {r.status_code} instead of 507 on a full disk")
                if not openai_error(r):
                    problems_ingest.append(f"upload {i}: HTTP {r.status_code} without an error body: {r.text[:200]}")
                errors_seen.append(f"HTTP {r.status_code}: {r.json()['error']['message'][:120]}"
                                   if openai_error(r) else f"HTTP {r.status_code}")
                if len(errors_seen) >= 3:
                    break
            if not full:
                problems_ingest.append("the disk never filled")
            # Key creation on a disk without a free byte: a one-line error, or success (the
            # database file may still have free pages inside); never a hang. Up to 300 keys, so
            # that the file must grow and fail.
            with open(ballast, "ab") as f:
                try:
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
                except OSError:
                    pass
            for i in range(300):
                secret, err = create_key(state, f"full{i}")
                if secret:
                    acked_keys[f"full{i}"] = secret
                else:
                    key_errors.append(err.splitlines()[-1] if err else "?")
                    if len(err.strip().splitlines()) != 1:
                        problems_keys.append(f"key {i}: not a one-line error: {err[:200]!r}")
                    if len(key_errors) >= 3:
                        break
            if not key_errors:
                problems_keys.append("key creation never hit the full disk (test invalid)")
            if not d.alive():
                problems_ingest.append("daemon died on a full disk")
                raise RuntimeError("daemon died")
            ballast.unlink()
            # Space is back: the running daemon serves again.
            r = c.post("/v1/kb/collections/full/documents", params={"filename": "after.md"},
                       content=b"# after\n\nafter the disk was freed marker-after\n",
                       headers={"Content-Type": "text/markdown"})
            if r.status_code != 201:
                problems_ingest.append(f"ingest after freeing space: HTTP {r.status_code} {r.text[:200]}")
            else:
                acked_docs["after.md"] = "marker-after"
            secret, err = create_key(state, "after")
            if secret:
                acked_keys["after"] = secret
            else:
                problems_keys.append(f"key creation after freeing space: {err}")
        problems_keys += keys_authenticate(d, acked_keys)
        d.kill9()
        d = None
        d = start(state)
        restarted = True
        problems_keys += [f"after kill -9: {b}" for b in keys_authenticate(d, acked_keys)]
        with d.client(timeout=60, headers=h) as c:
            deadline = time.time() + 120
            while c.get("/v1/kb/collections").status_code != 200 and time.time() < deadline:
                time.sleep(0.1)
            r = c.get("/v1/kb/collections/full/documents", params={"limit": 1000})
            names = {x["filename"] for x in r.json().get("data", [])} if r.status_code == 200 else set()
            lost = [n for n in acked_docs if n not in names]
            if r.status_code != 200:
                problems_ingest.append(f"listing after restart: HTTP {r.status_code}")
            elif lost:
                problems_ingest.append(f"{len(lost)} acknowledged documents lost after restart: {lost[:3]}")
    except RuntimeError as e:
        problems_ingest.append(str(e)[-300:])
    finally:
        if d is not None:
            d.stop()
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    rows = [
        Row("faults", "disk full during ingest (tmpfs state dir)", f"{size_mib} MiB tmpfs + ballast",
            "clear error, nothing acknowledged lost, serves after space is freed, DB opens after kill -9",
            f"{len(acked_docs)} documents acknowledged; errors: {'; '.join(errors_seen[:2]) or 'none'}; "
            f"restart after kill -9: {'database opens' if restarted else 'FAILED'}"
            f"{'; PROBLEMS: ' + '; '.join(problems_ingest[:3]) if problems_ingest else ''}",
            not problems_ingest),
        Row("faults", "disk full during key creation", f"{size_mib} MiB tmpfs + ballast",
            "one-line CLI error, acknowledged keys authenticate after freeing space and after kill -9",
            f"{len(acked_keys)} keys acknowledged; errors: {'; '.join(sorted(set(key_errors))[:2]) or 'none'}"
            f"{'; PROBLEMS: ' + '; '.join(problems_keys[:3]) if problems_keys else ''}",
            not problems_keys),
    ]
    return rows


def worst_case_upload(tmp, full):
    """A 64 MiB text of `a,a,a,…` (no whitespace, no sentence end: the chunker's worst case)
    uploaded to a daemon with the default `kb.chunk_timeout_s` (300 s) at full scale, 20 s at
    CI scale. Pass: the upload is refused with a clear error or finished within that bound
    plus a margin, and meanwhile `edgeseek status` (the admin socket) answers every time in
    < 1 s and the API's /healthz answers."""
    timeout_s = 300 if full else 20
    d = Daemon(tmp / "worst", f"[kb]\nchunk_timeout_s = {timeout_s}\n")
    problems, status_lat, health_fail = [], [], 0
    outcome = "?"
    try:
        d.wait_ready()
        admin = d.key("admin", "admin")
        h = {"Authorization": f"Bearer {admin}"}
        with d.client(timeout=60, headers=h) as c:
            kb_collection(c, "worst")
        body = b"a," * (32 << 20)
        result = {}

        def upload():
            t0 = time.monotonic()
            try:
                with d.client(timeout=timeout_s + 600, headers=h) as c:
                    r = c.post("/v1/kb/collections/worst/documents", params={"filename": "worst.txt"},
                               content=body, headers={"Content-Type": "text/plain"})
                result["status"], result["ok_body"] = r.status_code, r.status_code == 201 or openai_error(r)
                result["msg"] = r.json()["error"]["message"][:120] if openai_error(r) else ""
            except httpx.HTTPError as e:
                result["status"], result["ok_body"], result["msg"] = None, False, type(e).__name__
            result["seconds"] = time.monotonic() - t0

        t = threading.Thread(target=upload)
        t.start()
        with d.client(timeout=5) as hc:
            while t.is_alive():
                t0 = time.monotonic()
                p = cli("status", "--dev", "--state-dir", str(d.state), timeout=30)
                status_lat.append(time.monotonic() - t0)
                if p.returncode != 0:
                    problems.append(f"status failed: {p.stderr.strip()[:120]}")
                try:
                    if hc.get("/healthz").status_code != 200:
                        health_fail += 1
                except httpx.HTTPError:
                    health_fail += 1
                time.sleep(0.2)
        t.join()
        secs = result.get("seconds", 0)
        outcome = (f"HTTP {result.get('status')} after {secs:.0f} s"
                   + (f" ({result['msg']})" if result.get("msg") else ""))
        if not result.get("ok_body"):
            problems.append(f"no clear answer: {outcome}")
        if secs > timeout_s + 120:
            problems.append(f"took {secs:.0f} s, over the {timeout_s} s chunking bound + 120 s")
        if status_lat and max(status_lat) >= 1.0:
            problems.append(f"admin status took up to {max(status_lat):.2f} s")
        if health_fail:
            problems.append(f"/healthz failed {health_fail} times")
        if not d.alive():
            problems.append("daemon died")
    except RuntimeError as e:
        problems.append(str(e)[-300:])
    finally:
        d.stop()
    lat = (f"admin status answered {len(status_lat)} times, max {max(status_lat):.2f} s"
           if status_lat else "no status sample")
    return Row("faults", "worst-case upload (64 MiB of `a,a,a,…`)",
               f"kb.chunk_timeout_s = {timeout_s}",
               "refused with a clear error or finished in bounded time; admin status < 1 s meanwhile",
               f"{outcome}; {lat}" + (f"; PROBLEMS: {'; '.join(problems[:3])}" if problems else ""),
               not problems)


def run(tmp: Path, full: bool):
    rng = random.Random(11)
    rows = [kill_during_ingest(30 if full else 3),
            kill_during_key_creation(tmp, 30 if full else 4, rng),
            kill_during_reload(tmp, 20 if full else 3, rng)]
    rows += disk_full(tmp, 64)
    rows.append(worst_case_upload(tmp, full))
    return rows
