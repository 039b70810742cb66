"""Knowledge-base retrieval evaluation over the gold set in tests/kb/gold (see scripts/eval-kb).

Uploads the gold documents through the HTTP API into one collection per language, runs every
gold question with each search mode, and scores the results:

  * a retrieved chunk is relevant iff its `filename` equals the question's `document` and its
    text contains the question's `evidence` (both normalised, see `normalize`);
  * recall@k: the share of questions with a relevant chunk among the top k;
  * MRR@k: the mean of 1/rank of the first relevant chunk (0 when none is in the top k).

Before searching, every uploaded document is read back with its chunks, so a question whose
evidence no chunk contains (lost in parsing or split by chunking) is reported as such rather
than blamed on ranking.

The module is also imported by the end-to-end test tests/e2e/test_kb_eval.py.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOLD = ROOT / "tests" / "kb" / "gold"
QUESTIONS = GOLD / "questions.json"
LANGS = ("en", "zh")
MODES = ("bm25", "vector", "hybrid")
TYPES = ("keyword", "paraphrase", "ambiguous", "fact")
# Questions about the Debian PDF manuals are scored as their own group, not as English.
EXTERNAL = "ext"
DEFAULT_MODEL = ROOT / "tests" / "fixtures" / "tiny-qwen2-genai"

CONTENT_TYPES = {
    ".txt": "text/plain",
    ".md": "text/markdown",
    ".html": "text/html",
    ".htm": "text/html",
    ".pdf": "application/pdf",
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
}


class EvalError(Exception):
    """A failure that stops the evaluation; its message is one line for the CLI."""


# --- the gold set -----------------------------------------------------------------------

def normalize(text: str) -> str:
    """The form in which evidence is matched against chunk text.

    NFKC folds compatibility characters that PDF extraction produces (ligatures such as "ﬁ",
    full-width punctuation) and removing all whitespace makes the match independent of how a
    parser joins lines and whether it puts spaces between CJK and Latin text."""
    return "".join(unicodedata.normalize("NFKC", text).split())


@dataclass(frozen=True)
class Question:
    id: str
    lang: str
    type: str
    query: str
    document: str
    evidence: str
    external: bool = False
    path: str | None = None
    package: str | None = None

    @property
    def group(self) -> str:
        return EXTERNAL if self.external else self.lang


@dataclass(frozen=True)
class Document:
    path: Path
    lang: str
    external: bool = False

    @property
    def filename(self) -> str:
        return self.path.name

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.path.suffix.lower()]


@dataclass
class GoldSet:
    questions: list[Question]
    documents: dict[str, list[Document]]  # lang -> documents uploaded into that collection


def load_questions(path: Path = QUESTIONS) -> list[Question]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return [Question(**q) for q in data["questions"]]


def load_gold(external: bool = True, langs=LANGS, path: Path = QUESTIONS) -> GoldSet:
    """The questions for `langs` and the documents to upload: every file under
    tests/kb/gold/<lang>/, plus (with `external`) the PDFs named by external questions, which
    go into the English collection."""
    questions = [q for q in load_questions(path)
                 if q.lang in langs and (external or not q.external)]
    docs: dict[str, list[Document]] = {}
    for lang in langs:
        files = sorted(p for p in (GOLD / lang).iterdir()
                       if p.is_file() and p.suffix.lower() in CONTENT_TYPES)
        docs[lang] = [Document(p, lang) for p in files]
    for q in questions:
        if q.external and q.path:
            p = Path(q.path)
            if not p.is_file():
                raise EvalError(f"{p} is missing (install the Debian package {q.package}, "
                                f"or pass --no-external)")
            if all(d.path != p for d in docs[q.lang]):
                docs[q.lang].append(Document(p, q.lang, external=True))
    return GoldSet(questions, docs)


# --- the daemon -------------------------------------------------------------------------

def tls_context(ca: Path | None) -> ssl.SSLContext:
    """Trust only the daemon's CA (when given), with the strict X.509 checks that Python
    >= 3.13 applies by default, like the end-to-end tests."""
    ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    return ctx


class Daemon:
    """`edgeseek serve --dev` on 127.0.0.1 with a temporary state dir and an admin key created
    offline with `edgeseek keys create` before the server starts."""

    def __init__(self, binary: Path, model: Path = DEFAULT_MODEL, port: int = 0,
                 state: Path | None = None, extra_args=(), log_level: str = "warn"):
        self.binary = Path(binary)
        if not self.binary.is_file():
            raise EvalError(f"{self.binary} does not exist (run `cargo build` first)")
        self._tmp = None
        if state is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="eval-kb-")
            state = Path(self._tmp.name) / "state"
        self.state = state
        self.state.mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if k != "ORT_DYLIB_PATH"}
        self.env["EDGESEEK_LOG"] = os.environ.get("EDGESEEK_TEST_LOG", log_level)
        self.key = self._create_key()
        args = [str(self.binary), "serve", "--dev", "--state-dir", str(self.state),
                "--listen", f"127.0.0.1:{port}", "--model", str(model), *extra_args]
        self.log_path = self.state / "serve.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, cwd=ROOT, env=self.env, stdout=subprocess.PIPE,
                                     stderr=self._log, text=True)
        try:
            self.url = self._read_url(timeout=120)
        except BaseException:
            self.stop()
            raise
        self.ca = self.state / "tls" / "ca.pem"

    def _create_key(self) -> str:
        p = subprocess.run([str(self.binary), "keys", "create", "--dev", "--state-dir",
                            str(self.state), "--name", "eval-kb", "--scope", "admin"],
                           cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=120)
        if p.returncode != 0:
            raise EvalError(f"edgeseek keys create failed: {p.stderr.strip()}")
        return p.stdout.strip().splitlines()[-1]

    def _read_url(self, timeout: float) -> str:
        found: dict[str, str] = {}

        def reader():
            # Keep draining stdout for the daemon's whole life so it never blocks on a full pipe.
            for line in self.proc.stdout:
                if line.startswith("listening on https://") and "url" not in found:
                    found["url"] = line.split()[-1].strip()

        threading.Thread(target=reader, daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "url" in found:
                return found["url"]
            if self.proc.poll() is not None:
                raise EvalError(f"edgeseek serve exited with {self.proc.returncode}: "
                                f"{self.logs()[-2000:]}")
            time.sleep(0.05)
        raise EvalError(f"edgeseek serve printed no address in {timeout:.0f} s")

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, client: "KbClient", timeout: float = 120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if client.ready():
                return
            if self.proc.poll() is not None:
                raise EvalError(f"edgeseek serve exited with {self.proc.returncode}")
            time.sleep(0.1)
        raise EvalError(f"edgeseek serve not ready after {timeout:.0f} s")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        if self._tmp is not None:
            self._tmp.cleanup()


# --- the API client ---------------------------------------------------------------------

class ApiError(EvalError):
    def __init__(self, method: str, path: str, status: int, body: str):
        self.status = status
        try:
            err = json.loads(body)["error"]
            detail = f"{err.get('type')}: {err.get('message')}"
        except (ValueError, KeyError, TypeError):
            detail = body[:300]
        super().__init__(f"{method} {path} -> {status} {detail}")


class KbClient:
    """The knowledge-base routes of the edgeseek API, as the contract defines them."""

    def __init__(self, url: str, key: str, ca: Path | None, timeout: float = 300,
                 unavailable_wait: float = 120):
        import httpx  # in the test venv; imported here so `normalize` & co. need nothing

        # The daemon answers before its embedding model has loaded (on its own thread) and
        # says 503 until then; requests are retried for this long before giving up.
        self.unavailable_wait = unavailable_wait

        self.http = httpx.Client(
            base_url=url.rstrip("/"), verify=tls_context(ca), timeout=timeout,
            headers={"Authorization": f"Bearer {key}"},
            # No pooled keep-alive: the server closes idle connections after its header
            # timeout, and a slow upload followed by a reused connection would race that.
            limits=httpx.Limits(max_keepalive_connections=0))

    def close(self):
        self.http.close()

    def _request(self, method: str, path: str, **kw):
        import httpx

        deadline = time.monotonic() + self.unavailable_wait
        while True:
            try:
                r = self.http.request(method, path, **kw)
            except httpx.HTTPError as e:
                raise EvalError(f"{method} {path}: {type(e).__name__}: {e}") from e
            if r.status_code != 503 or time.monotonic() >= deadline:
                return r
            time.sleep(0.5)

    def _call(self, method: str, path: str, ok=(200,), **kw):
        r = self._request(method, path, **kw)
        if r.status_code not in ok:
            raise ApiError(method, path, r.status_code, r.text)
        return r.json()

    def ready(self) -> bool:
        try:
            return self.http.get("/readyz").status_code == 200
        except Exception:  # connection refused while starting: not ready yet
            return False

    def create_collection(self, name: str, replace: bool = True) -> dict:
        """Create `name`; an existing one (409) is deleted first when `replace`."""
        r = self._request("POST", "/v1/kb/collections", json={"name": name})
        if r.status_code == 409 and replace:
            self.delete_collection(name)
            r = self._request("POST", "/v1/kb/collections", json={"name": name})
        if r.status_code != 201:
            raise ApiError("POST", "/v1/kb/collections", r.status_code, r.text)
        return r.json()

    def delete_collection(self, name: str) -> dict:
        return self._call("DELETE", f"/v1/kb/collections/{name}")

    def collections(self) -> list[dict]:
        return self._call("GET", "/v1/kb/collections")["data"]

    def upload(self, collection: str, doc: Document) -> dict:
        return self._call("POST", f"/v1/kb/collections/{collection}/documents", ok=(201,),
                          params={"filename": doc.filename}, content=doc.path.read_bytes(),
                          headers={"Content-Type": doc.content_type})

    def document(self, collection: str, doc_id: str) -> dict:
        return self._call("GET", f"/v1/kb/collections/{collection}/documents/{doc_id}")

    def search(self, collections: list[str], query: str, top_k: int, mode: str) -> list[dict]:
        body = {"collections": collections, "query": query, "top_k": top_k, "mode": mode}
        return self._call("POST", "/v1/kb/search", json=body)["results"]


# --- the evaluation ---------------------------------------------------------------------

@dataclass
class Outcome:
    """One question under one mode."""
    rank: int | None            # 1-based rank of the first relevant chunk, None if not in top k
    doc_rank: int | None        # 1-based rank of the first chunk of the right document
    top: list[tuple[str, str]]  # (filename, text) of what came back, best first
    ms: float


@dataclass
class Report:
    top_k: int
    modes: tuple[str, ...]
    questions: list[Question]
    uploads: list[dict] = field(default_factory=list)
    unreachable: set[str] = field(default_factory=set)  # question ids no chunk can answer
    outcomes: dict[tuple[str, str], Outcome] = field(default_factory=dict)  # (qid, mode)
    seconds: dict[str, float] = field(default_factory=dict)
    # Results whose `collection` is not the one searched (the API must never return them).
    foreign_results: int = 0

    def groups(self) -> list[str]:
        present = {q.group for q in self.questions}
        return [g for g in (*LANGS, EXTERNAL) if g in present]

    def scores(self, group: str, mode: str, qtype: str | None = None) -> dict:
        qs = [q for q in self.questions
              if q.group == group and (qtype is None or q.type == qtype)]
        ranks = [self.outcomes[(q.id, mode)].rank for q in qs]
        n = len(ranks)
        hits = sum(r is not None for r in ranks)
        return {"n": n,
                "recall": hits / n if n else 0.0,
                "mrr": sum(1 / r for r in ranks if r is not None) / n if n else 0.0}

    def latency_ms(self, mode: str) -> dict:
        ms = sorted(o.ms for (qid, m), o in self.outcomes.items() if m == mode)
        if not ms:
            return {}
        return {"p50": statistics.median(ms), "max": ms[-1]}

    def misses(self, mode: str = "hybrid") -> list[Question]:
        return [q for q in self.questions if self.outcomes[(q.id, mode)].rank is None]

    def to_json(self) -> dict:
        res = {}
        for g in self.groups():
            res[g] = {}
            for m in self.modes:
                s = self.scores(g, m)
                s["by_type"] = {t: self.scores(g, m, t) for t in TYPES
                                if any(q.group == g and q.type == t for q in self.questions)}
                res[g][m] = s
        miss_mode = "hybrid" if "hybrid" in self.modes else self.modes[-1]
        return {
            "top_k": self.top_k,
            "results": res,
            "latency_ms": {m: self.latency_ms(m) for m in self.modes},
            "unreachable": sorted(self.unreachable),
            "misses": {"mode": miss_mode,
                       "questions": [self._miss_json(q, miss_mode) for q in self.misses(miss_mode)]},
            "ranks": {q.id: {m: self.outcomes[(q.id, m)].rank for m in self.modes}
                      for q in self.questions},
            "foreign_results": self.foreign_results,
            "documents": self.uploads,
            "seconds": self.seconds,
        }

    def _miss_json(self, q: Question, mode: str) -> dict:
        o = self.outcomes[(q.id, mode)]
        return {"id": q.id, "type": q.type, "query": q.query, "document": q.document,
                "evidence": q.evidence, "reachable": q.id not in self.unreachable,
                "document_rank": o.doc_rank, "got": [f for f, _ in o.top]}


def collection_name(prefix: str, lang: str) -> str:
    return f"{prefix}-{lang}"


def upload_all(client: KbClient, gold: GoldSet, prefix: str, log=None) -> tuple[list[dict], set[str]]:
    """Create the collections, upload every document, read the chunks back, and return the
    upload records and the ids of the questions whose evidence no chunk of their document
    contains."""
    uploads = []
    chunk_texts: dict[tuple[str, str], list[str]] = {}  # (lang, filename) -> chunk texts
    for lang, docs in gold.documents.items():
        coll = collection_name(prefix, lang)
        client.create_collection(coll)
        for doc in docs:
            t0 = time.monotonic()
            info = client.upload(coll, doc)
            secs = time.monotonic() - t0
            # The filename is the relevance key: if the API does not store it as sent
            # (e.g. percent-decoding of Chinese names), every score below would be zero.
            if info.get("filename") != doc.filename:
                raise EvalError(f"uploaded {doc.filename!r} but the API stored "
                                f"{info.get('filename')!r}")
            if not info.get("chunks"):
                raise EvalError(f"{doc.filename}: the API stored no chunks")
            full = client.document(coll, info["id"])
            chunk_texts[(lang, doc.filename)] = [c["text"] for c in full.get("chunks", [])]
            uploads.append({"collection": coll, "filename": doc.filename, "id": info["id"],
                            "kind": info.get("kind"), "bytes": info.get("bytes"),
                            "chunks": info.get("chunks"), "pages": info.get("pages"),
                            "seconds": round(secs, 3)})
            if log:
                log(f"  {coll}: {doc.filename} ({info.get('chunks')} chunks, {secs:.2f} s)")
    unreachable = set()
    for q in gold.questions:
        texts = chunk_texts.get((q.lang, q.document))
        if texts is None:
            raise EvalError(f"{q.id}: document {q.document!r} is not in the gold set")
        ev = normalize(q.evidence)
        if not any(ev in normalize(t) for t in texts):
            unreachable.add(q.id)
    return uploads, unreachable


def score(q: Question, results: list[dict]) -> tuple[int | None, int | None]:
    """(rank of the first relevant chunk, rank of the first chunk of the right document)."""
    ev = normalize(q.evidence)
    rank = doc_rank = None
    for i, r in enumerate(results, 1):
        if r.get("filename") != q.document:
            continue
        if doc_rank is None:
            doc_rank = i
        if ev in normalize(r.get("text", "")):
            rank = i
            break
    return rank, doc_rank


def evaluate(client: KbClient, gold: GoldSet, modes=MODES, top_k: int = 5,
             prefix: str = "gold", keep: bool = True, log=None) -> Report:
    report = Report(top_k=top_k, modes=tuple(modes), questions=gold.questions)
    t0 = time.monotonic()
    report.uploads, report.unreachable = upload_all(client, gold, prefix, log)
    report.seconds["ingest"] = round(time.monotonic() - t0, 2)
    t0 = time.monotonic()
    try:
        for mode in modes:
            for q in gold.questions:
                s = time.monotonic()
                coll = collection_name(prefix, q.lang)
                results = client.search([coll], q.query, top_k, mode)
                ms = (time.monotonic() - s) * 1000
                if len(results) > top_k:
                    raise EvalError(f"search returned {len(results)} results for top_k {top_k}")
                report.foreign_results += sum(r.get("collection") != coll for r in results)
                rank, doc_rank = score(q, results)
                report.outcomes[(q.id, mode)] = Outcome(
                    rank, doc_rank, [(r.get("filename", ""), r.get("text", "")) for r in results], ms)
        report.seconds["search"] = round(time.monotonic() - t0, 2)
    finally:
        if not keep:
            for lang in gold.documents:
                client.delete_collection(collection_name(prefix, lang))
    return report


# --- output -----------------------------------------------------------------------------

GROUP_LABEL = {"en": "en", "zh": "zh", EXTERNAL: "en-pdf"}


def format_report(rep: Report, show_misses: bool = True) -> str:
    k = rep.top_k
    lines = []
    ndocs = {}
    for u in rep.uploads:
        ndocs[u["collection"]] = ndocs.get(u["collection"], 0) + 1
    counts = ", ".join(f"{GROUP_LABEL[g]} {sum(q.group == g for q in rep.questions)}"
                       for g in rep.groups())
    lines.append(f"gold set: {counts} questions; documents "
                 + ", ".join(f"{c} {n}" for c, n in ndocs.items())
                 + f"; ingest {rep.seconds.get('ingest', 0):.1f} s")
    lines.append("")
    head = f"{'lang':<7} {'mode':<7} {'n':>3}  {f'recall@{k}':>9}  {f'MRR@{k}':>6}   by type (recall)"
    lines.append(head)
    lines.append("-" * len(head))
    for g in rep.groups():
        for m in rep.modes:
            s = rep.scores(g, m)
            types = "  ".join(
                f"{t} {rep.scores(g, m, t)['recall']:.2f}" for t in TYPES
                if any(q.group == g and q.type == t for q in rep.questions))
            lines.append(f"{GROUP_LABEL[g]:<7} {m:<7} {s['n']:>3}  {s['recall']:>9.3f}  "
                         f"{s['mrr']:>6.3f}   {types}")
    lines.append("")
    lat = "  ".join(f"{m} p50 {v['p50']:.1f} ms" for m in rep.modes
                    if (v := rep.latency_ms(m)))
    lines.append(f"search latency (HTTP round trip): {lat}")
    if rep.unreachable:
        lines.append("")
        lines.append(f"evidence in no chunk of its document (parsing/chunking): "
                     f"{', '.join(sorted(rep.unreachable))}")
    if show_misses:
        mode = "hybrid" if "hybrid" in rep.modes else rep.modes[-1]
        misses = rep.misses(mode)
        lines.append("")
        lines.append(f"{mode} misses ({len(misses)}):")
        for q in misses:
            o = rep.outcomes[(q.id, mode)]
            why = ("evidence in no chunk" if q.id in rep.unreachable
                   else f"right document at rank {o.doc_rank}, other chunk" if o.doc_rank
                   else "document not in the top k")
            lines.append(f"  {q.id} [{q.type}] {q.query}")
            lines.append(f"      want {q.document}: \"{q.evidence}\" ({why})")
            lines.append(f"      got  {', '.join(f for f, _ in o.top) or '(nothing)'}")
    return "\n".join(lines)


# --- CLI --------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="eval-kb",
        description="Retrieval evaluation of the knowledge base over the gold set "
                    "(tests/kb/gold): recall@k and MRR per language and search mode.")
    src = ap.add_argument_group("daemon (default: start target/debug/edgeseek serve --dev)")
    src.add_argument("--url", help="use a running daemon, e.g. https://127.0.0.1:8443")
    src.add_argument("--key", help="API key with kb:write on the gold collections "
                                   "(default: $EDGESEEK_KEY)")
    src.add_argument("--ca", type=Path, help="CA file to trust (default: the system store)")
    src.add_argument("--bin", type=Path,
                     default=Path(os.environ.get("EDGESEEK_BIN", ROOT / "target/debug/edgeseek")))
    src.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="chat model to serve")
    src.add_argument("--port", type=int, default=0, help="listen port (0: any free port)")
    src.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                     help="extra argument for `edgeseek serve` (repeatable)")
    ap.add_argument("--lang", default=",".join(LANGS), help="languages, e.g. en or en,zh")
    ap.add_argument("--modes", default=",".join(MODES), help="search modes to run")
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--prefix", default="gold", help="collection name prefix (gold-en, gold-zh)")
    ap.add_argument("--no-external", action="store_true",
                    help="skip the questions over the Debian PDF manuals")
    ap.add_argument("--keep", action="store_true",
                    help="leave the collections in place after the run (with --url)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args(argv)

    langs = tuple(x for x in args.lang.split(",") if x)
    modes = tuple(x for x in args.modes.split(",") if x)
    bad = [x for x in langs if x not in LANGS] + [x for x in modes if x not in MODES]
    if bad:
        ap.error(f"unknown language or mode: {', '.join(bad)}")
    if args.top_k < 1:
        ap.error("--top-k must be at least 1")

    def log(msg):
        print(msg, file=sys.stderr)

    daemon = client = None
    try:
        gold = load_gold(external=not args.no_external, langs=langs)
        if args.url:
            key = args.key or os.environ.get("EDGESEEK_KEY")
            if not key:
                raise EvalError("--url needs --key (or EDGESEEK_KEY)")
            client = KbClient(args.url, key, args.ca)
            keep = args.keep
        else:
            log(f"starting {args.bin} serve --dev ...")
            daemon = Daemon(args.bin, model=args.model, port=args.port,
                            extra_args=args.serve_arg)
            client = KbClient(daemon.url, daemon.key, daemon.ca)
            daemon.wait_ready(client)
            log(f"serving on {daemon.url}")
            keep = True  # the state dir goes away with the daemon
        report = evaluate(client, gold, modes=modes, top_k=args.top_k, prefix=args.prefix,
                          keep=keep, log=log)
    except EvalError as e:
        print(f"eval-kb: error: {e}", file=sys.stderr)
        return 1
    finally:
        if client:
            client.close()
        if daemon:
            daemon.stop()
    if args.json:
        print(json.dumps(report.to_json(), ensure_ascii=False, indent=2))
    else:
        print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
