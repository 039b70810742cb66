"""kill -9 durability test of the knowledge base (run by `scripts/kb-crash-test`).

Each iteration starts the real daemon on the same state directory, checks that every document
whose upload was acknowledged (HTTP 201) before an earlier `kill -9` is there and whole, then
uploads, replaces and deletes documents from several client threads and kills the daemon with
SIGKILL at a random moment. "Whole" means: the document's chunks contain every marker line of
the version that was acknowledged, and a replaced document's old version is gone.

A document whose upload was in flight at the kill may be present or absent; if present it must
be whole too (one of the versions sent, complete), never partial.
"""

import argparse
import json
import random
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "e2e"))

from test_api import Server  # noqa: E402  (the e2e tests' way to run the real daemon)

COLLECTION = "crash"


def document(name: str, version: int, paragraphs: int) -> tuple[str, list[str]]:
    """Markdown with one unique marker per paragraph, so completeness is checkable."""
    markers = [f"marker-{name}-v{version}-p{i}" for i in range(paragraphs)]
    body = [f"# {name} version {version}\n"]
    for i, m in enumerate(markers):
        if i % 4 == 0:
            body.append(f"## Section {i // 4}\n")
        body.append(
            f"Paragraph {i} of {name}. {m} The quarterly procedure requires approval by the "
            f"department manager before any expense above the limit is reimbursed.\n"
        )
    return "\n".join(body), markers


class Ledger:
    """Per document name: the state the server acknowledged, and the operation in flight.

    Each name belongs to one client thread, so operations on a name never race each other:
    after a kill the stored state of a name is either its acknowledged state or the result of
    the one operation that was in flight.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.acked = {}  # name -> markers of the acknowledged version, or None (absent)
        self.inflight = {}  # name -> markers of an upload in flight, or None (a delete)
        self.version = {}
        self.ids = {}  # name -> document id of the acknowledged version
        self.errors = []  # unexpected answers seen by the client threads
        self.acks = 0  # uploads and deletes the server acknowledged, over the whole run
        self.inflight_at_kill = 0  # operations cut off by a kill ...
        self.inflight_applied = 0  # ... of which the restart showed the result


def uploader(srv, key, ledger, stop, rng_seed, names):
    import httpx

    rng = random.Random(rng_seed)
    http = httpx.Client(base_url=srv.url, verify=srv.tls_context(), timeout=30,
                        headers={"Authorization": f"Bearer {key}"})
    try:
        while not stop.is_set():
            name = rng.choice(names)
            with ledger.lock:
                doc_id = ledger.ids.get(name)
            if doc_id is not None and rng.random() < 0.1:
                with ledger.lock:
                    ledger.inflight[name] = None
                r = http.delete(f"/v1/kb/collections/{COLLECTION}/documents/{doc_id}")
                if r.status_code != 200:
                    raise AssertionError(f"delete {name}: {r.status_code} {r.text}")
                with ledger.lock:
                    ledger.acked[name] = None
                    ledger.ids.pop(name, None)
                    del ledger.inflight[name]
                continue
            v = ledger.version.get(name, 0) + 1
            ledger.version[name] = v
            text, markers = document(name, v, rng.randint(3, 24))
            with ledger.lock:
                ledger.inflight[name] = markers
            r = http.post(f"/v1/kb/collections/{COLLECTION}/documents",
                          params={"filename": name}, content=text.encode(),
                          headers={"Content-Type": "text/markdown"})
            if r.status_code != 201:
                raise AssertionError(f"upload {name}: {r.status_code} {r.text}")
            with ledger.lock:
                ledger.acked[name] = markers
                ledger.ids[name] = r.json()["id"]
                del ledger.inflight[name]
                ledger.acks += 1
    except (httpx.TransportError, httpx.TimeoutException):
        pass  # the daemon was killed under us: the operation stays in flight
    except AssertionError as e:
        with ledger.lock:
            ledger.errors.append(str(e))
    finally:
        http.close()


def check(srv, key, ledger):
    """Every name is in its acknowledged state or the result of its in-flight operation, and
    every stored document is whole. Returns (#acknowledged documents present, problems)."""
    import httpx

    http = httpx.Client(base_url=srv.url, verify=srv.tls_context(), timeout=60,
                        headers={"Authorization": f"Bearer {key}"})
    problems = []
    r = http.get(f"/v1/kb/collections/{COLLECTION}/documents")
    assert r.status_code == 200, r.text
    listed = {}
    for d in r.json()["data"]:
        if d["filename"] in listed:
            problems.append(f"{d['filename']}: listed twice")
        listed[d["filename"]] = d
    present = 0
    with ledger.lock:
        names = set(ledger.acked) | set(ledger.inflight) | set(listed)
        for name in sorted(names):
            allowed = [ledger.acked.get(name)]
            if name in ledger.inflight:
                allowed.append(ledger.inflight[name])
            d = listed.get(name)
            if d is None:
                observed = None
            else:
                full = http.get(f"/v1/kb/collections/{COLLECTION}/documents/{d['id']}")
                if full.status_code != 200:
                    problems.append(f"{name}: listed but GET {d['id']} → {full.status_code}")
                    continue
                text = "\n".join(c["text"] for c in full.json()["chunks"])
                observed = next((m for m in allowed if m and m[0] in text), "unknown")
                if observed == "unknown":
                    problems.append(f"{name}: stored text is neither the acknowledged nor the "
                                    f"in-flight version")
                    continue
                missing = [m for m in observed if m not in text]
                if missing:
                    problems.append(f"{name}: {len(missing)} of {len(observed)} markers missing "
                                    f"(partial document)")
                    continue
            if observed is None and None not in allowed:
                problems.append(f"{name}: acknowledged document lost")
                continue
            if observed is not None and observed is ledger.acked.get(name):
                present += 1
            # The crash resolved the in-flight operation one way or the other.
            if name in ledger.inflight:
                ledger.inflight_at_kill += 1
                if observed is not ledger.acked.get(name):
                    ledger.inflight_applied += 1
            ledger.acked[name] = observed
            if observed is None:
                ledger.ids.pop(name, None)
            else:
                ledger.ids[name] = listed[name]["id"]
            ledger.inflight.pop(name, None)
    http.close()
    return present, problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--state", type=Path, required=True, help="state directory (created)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=3)
    ap.add_argument("--max-delay", type=float, default=1.5,
                    help="longest time before the kill, seconds")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    ledger = Ledger()
    names = [f"doc{i:03d}.md" for i in range(40)]
    key = None
    total_problems = []
    started = time.time()
    for it in range(a.iterations):
        srv = Server(a.state)
        try:
            deadline = time.time() + 120
            if key is None:
                key = srv.key("crash", "kb:write:*")
            # The knowledge base answers once the embedding model is loaded.
            while True:
                r = srv.http.get("/v1/kb/collections", headers={"Authorization": f"Bearer {key}"})
                if r.status_code == 200:
                    break
                if time.time() > deadline:
                    raise AssertionError(f"knowledge base not ready: {r.status_code} {r.text}")
                time.sleep(0.1)
            if it == 0:
                r = srv.http.post("/v1/kb/collections", json={"name": COLLECTION},
                                  headers={"Authorization": f"Bearer {key}"})
                assert r.status_code in (201, 409), r.text
            n, problems = check(srv, key, ledger)
            total_problems += [f"iteration {it}: {p}" for p in problems]
            total_problems += [f"iteration {it - 1}: {e}" for e in ledger.errors]
            ledger.errors.clear()
            stop = threading.Event()
            threads = [threading.Thread(target=uploader,
                                        args=(srv, key, ledger, stop, rng.random(),
                                              names[t::a.threads]))
                       for t in range(a.threads)]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.05, a.max_delay))
            srv.proc.kill()  # SIGKILL: no drain, no flush, no destructor
            srv.proc.wait()
            stop.set()
            for t in threads:
                t.join(timeout=30)
            print(f"iteration {it + 1}/{a.iterations}: {n} acknowledged documents checked, "
                  f"{len(problems)} problems", flush=True)
        finally:
            if srv.proc.poll() is None:
                srv.proc.kill()
                srv.proc.wait()
            srv.http.close()
    # A final clean start checks the state the last kill left.
    srv = Server(a.state)
    try:
        while srv.http.get("/v1/kb/collections",
                           headers={"Authorization": f"Bearer {key}"}).status_code != 200:
            time.sleep(0.1)
        n, problems = check(srv, key, ledger)
        total_problems += [f"final: {p}" for p in problems]
    finally:
        srv.stop()
    elapsed = time.time() - started
    summary = {"iterations": a.iterations, "acknowledged_documents": n,
               "acknowledged_operations": ledger.acks,
               "in_flight_at_kill": ledger.inflight_at_kill,
               "in_flight_committed": ledger.inflight_applied,
               "lost_or_partial": len(total_problems), "seconds": round(elapsed, 1)}
    print(json.dumps(summary))
    for p in total_problems:
        print("PROBLEM:", p, file=sys.stderr)
    sys.exit(1 if total_problems else 0)


if __name__ == "__main__":
    main()
