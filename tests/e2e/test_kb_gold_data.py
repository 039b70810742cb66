"""Checks of the knowledge-base gold set (tests/kb) that need no daemon: the questions file is
well formed, every evidence string really is in its document, inside one paragraph-sized block
that a chunker keeps whole, and the DOCX files match their committed sources.

Blocks are extracted here with the standard library only, independently of the daemon's
parsers, so that a gold-set mistake is caught before it shows up as a retrieval miss."""

import html.parser
import http.server
import json
import re
import sys
import threading
import unicodedata
import urllib.parse
import xml.etree.ElementTree as ET
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests" / "kb"))
import eval_kb  # noqa: E402
import make_docx  # noqa: E402

GOLD = eval_kb.GOLD
QUESTIONS = eval_kb.load_questions()
INTERNAL = [q for q in QUESTIONS if not q.external]
EXTERNAL = [q for q in QUESTIONS if q.external]
MAX_EVIDENCE = 60
# The chunker packs blocks up to ~200 MiniLM word-pieces; a block well under that is never
# split, so evidence inside one block is inside one chunk.
MAX_BLOCK_TOKENS = 160


def collapse(text):
    return " ".join(text.split())


def approx_tokens(text):
    """A conservative stand-in for MiniLM's word-piece count: every CJK character is one
    piece, a Latin word about 1.3, punctuation one each."""
    cjk = sum(1 for ch in text if unicodedata.east_asian_width(ch) in "WF" and ch.isalnum())
    words = re.findall(r"[A-Za-z]+|\d+", text)
    punct = re.findall(r"[^\w\s]", text)
    return cjk + int(1.3 * len(words)) + len(punct) + 1


# --- block extraction, one function per format ------------------------------------------

_MD_INLINE = [(re.compile(r"\*\*(.+?)\*\*"), r"\1"), (re.compile(r"(?<!\w)\*(.+?)\*(?!\w)"), r"\1"),
              (re.compile(r"`([^`]*)`"), r"\1"), (re.compile(r"\[([^\]]*)\]\([^)]*\)"), r"\1")]


def md_blocks(text):
    blocks, para = [], []

    def flush():
        if para:
            blocks.append(("paragraph", " ".join(para)))
            para.clear()

    for line in text.splitlines():
        s = line.strip()
        for pat, rep in _MD_INLINE:
            s = pat.sub(rep, s)
        if not s:
            flush()
        elif s.startswith("#"):
            flush()
            blocks.append(("heading", s.lstrip("#").strip()))
        elif s.startswith("|"):
            flush()
            if not re.fullmatch(r"[|\s:-]+", s):
                blocks += [("cell", c.strip()) for c in s.strip("|").split("|")]
        elif re.match(r"^([-*+]|\d+\.)\s", s):
            flush()
            blocks.append(("item", re.sub(r"^([-*+]|\d+\.)\s+", "", s)))
        else:
            para.append(s)
    flush()
    return blocks


def txt_blocks(text):
    # Plain text: each line is its own block (a parser may treat lines as list items).
    return [("paragraph", s.strip()) for s in text.splitlines() if s.strip()]


class _Html(html.parser.HTMLParser):
    BLOCK = {"p", "li", "td", "th", "title", "pre", "dt", "dd", "caption", "div",
             "h1", "h2", "h3", "h4", "h5", "h6"}
    SKIP = {"script", "style", "nav", "head"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.blocks, self.buf, self.kind, self.skip = [], [], "paragraph", 0

    def flush(self):
        t = collapse("".join(self.buf))
        if t:
            self.blocks.append((self.kind, t))
        self.buf = []

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skip += 1
        if tag in self.BLOCK:
            self.flush()
            self.kind = "heading" if re.fullmatch(r"h\d|title", tag) else "paragraph"

    def handle_endtag(self, tag):
        if tag in self.BLOCK:
            self.flush()
        if tag in self.SKIP:
            self.skip -= 1

    def handle_data(self, data):
        # <title> sits in <head>, which is skipped: it is metadata, not body text.
        if not self.skip:
            self.buf.append(data)


def html_blocks(text):
    p = _Html()
    p.feed(text)
    p.close()
    p.flush()
    return p.blocks


W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"


def docx_paragraphs(path):
    """(style id, text) of every paragraph in word/document.xml, in order."""
    with zipfile.ZipFile(path) as z:
        root = ET.fromstring(z.read("word/document.xml"))
    out = []
    for p in root.iter(W + "p"):
        style = p.find(f"{W}pPr/{W}pStyle")
        sid = style.get(W + "val") if style is not None else "Normal"
        out.append((sid, "".join(t.text or "" for t in p.iter(W + "t"))))
    return out


def docx_blocks(path):
    return [("heading" if sid.startswith(("Heading", "Title")) else "paragraph", text)
            for sid, text in docx_paragraphs(path) if text.strip()]


def blocks(path):
    suffix = path.suffix.lower()
    if suffix == ".docx":
        return docx_blocks(path)
    text = path.read_text(encoding="utf-8")
    return {".md": md_blocks, ".txt": txt_blocks, ".html": html_blocks}[suffix](text)


def gold_path(q):
    return GOLD / q.lang / q.document


# --- the questions file -----------------------------------------------------------------

def test_questions_are_well_formed():
    ids = [q.id for q in QUESTIONS]
    dupes = [i for i, n in Counter(ids).items() if n > 1]
    assert not dupes, f"duplicate ids: {dupes}"
    for q in QUESTIONS:
        assert q.lang in eval_kb.LANGS, q.id
        assert q.type in eval_kb.TYPES, q.id
        assert q.query.strip() and q.evidence.strip(), q.id
        assert len(q.evidence) <= MAX_EVIDENCE, f"{q.id}: evidence longer than {MAX_EVIDENCE}"
        assert eval_kb.normalize(q.evidence) not in eval_kb.normalize(q.query), \
            f"{q.id}: the query contains its own answer"
    dupes = [t for t, n in Counter((q.lang, q.query) for q in QUESTIONS).items() if n > 1]
    assert not dupes, f"duplicate queries: {dupes}"


def test_questions_cover_both_languages_and_every_document():
    per_lang = Counter(q.lang for q in INTERNAL)
    assert per_lang["en"] >= 35 and per_lang["zh"] >= 35, per_lang
    for lang in eval_kb.LANGS:
        docs = {p.name for p in (GOLD / lang).iterdir() if p.suffix in eval_kb.CONTENT_TYPES}
        assert 8 <= len(docs) <= 12, (lang, sorted(docs))
        asked = Counter(q.document for q in INTERNAL if q.lang == lang)
        assert set(asked) <= docs, f"unknown documents: {set(asked) - docs}"
        thin = sorted(d for d in docs if asked[d] < 3)
        assert not thin, f"{lang}: documents with fewer than 3 questions: {thin}"
        types = Counter(q.type for q in INTERNAL if q.lang == lang)
        assert all(types[t] >= 4 for t in eval_kb.TYPES), (lang, types)


def test_gold_documents_have_every_ingested_format():
    for lang in eval_kb.LANGS:
        kinds = {p.suffix for p in (GOLD / lang).iterdir() if p.suffix in eval_kb.CONTENT_TYPES}
        assert kinds >= {".md", ".txt", ".html", ".docx"}, (lang, kinds)


@pytest.mark.parametrize("q", INTERNAL, ids=[q.id for q in INTERNAL])
def test_evidence_is_in_one_block_of_its_document(q):
    path = gold_path(q)
    assert path.is_file(), path
    found = [(kind, text) for kind, text in blocks(path) if q.evidence in collapse(text)]
    assert found, f"{q.id}: {q.evidence!r} is not inside any single block of {q.document}"
    body = [(kind, text) for kind, text in found if kind != "heading"]
    # Chunk text may or may not repeat headings, so evidence must be in body text.
    assert body, f"{q.id}: evidence only occurs in a heading"
    assert any(approx_tokens(text) <= MAX_BLOCK_TOKENS for _, text in body), \
        f"{q.id}: the block holding the evidence is long enough to be split"
    # A sentence end inside the evidence would let a sentence splitter cut it in two.
    inner = q.evidence.rstrip(".。")
    assert not re.search(r"[.!?]\s|[。！？；]", inner), f"{q.id}: evidence spans sentences"


def test_text_documents_are_utf8_and_evidence_is_verbatim_in_the_source():
    """For md/txt the evidence must be in the raw file too (not only after the markup was
    stripped here): a parser that keeps inline markup would otherwise never match."""
    for q in INTERNAL:
        path = gold_path(q)
        if path.suffix in (".md", ".txt"):
            raw = collapse(path.read_text(encoding="utf-8"))
            assert q.evidence in raw, f"{q.id}: evidence not verbatim in {q.document}"


# --- external questions (PDF manuals shipped by Debian packages) ------------------------

def test_external_questions_name_installed_debian_manuals():
    assert len(EXTERNAL) >= 4
    for q in EXTERNAL:
        assert q.path and q.package, q.id
        p = Path(q.path)
        assert p.name == q.document and p.suffix == ".pdf", q.id
        assert p.is_file(), f"{p} missing: apt-get install -y {q.package}"
        # Their evidence is checked against the daemon's own chunks by test_kb_eval.py; here
        # only that the file really is a PDF.
        assert p.read_bytes()[:5] == b"%PDF-", p


# --- DOCX documents ---------------------------------------------------------------------

@pytest.mark.parametrize("src,dst", make_docx.sources(), ids=[s.stem for s, _ in make_docx.sources()])
def test_docx_matches_its_source(src, dst):
    assert dst.is_file(), f"{dst} missing: run tests/kb/make_docx.py"
    want = make_docx.parse_source(src)
    style_ids = {"Title": "Title", "Heading 1": "Heading1", "Heading 2": "Heading2",
                 "List Bullet": "ListBullet", "List Number": "ListNumber", "Normal": "Normal"}
    got = [(sid, text) for sid, text in docx_paragraphs(dst) if text.strip()]
    assert got == [(style_ids[s], t) for s, t in want]
    with zipfile.ZipFile(dst) as z:
        core = z.read("docProps/core.xml").decode()
    title = next(t for s, t in want if s == "Title")
    assert f"<dc:title>{title}</dc:title>" in core


def test_every_docx_has_a_source():
    built = {dst for _, dst in make_docx.sources()}
    for lang in eval_kb.LANGS:
        for p in (GOLD / lang).glob("*.docx"):
            assert p in built, f"{p} has no source under tests/kb/docx-src"


# --- the harness's own pieces ------------------------------------------------------------

def test_normalize_ignores_layout_but_not_content():
    n = eval_kb.normalize
    assert n("up to 5\npaid  days") == n("up to 5 paid days")
    assert n("年假 5 天") == n("年假5天")
    assert n("ﬁt note") == n("fit note")            # PDF ligature
    assert n("（含酒水）") == n("(含酒水)")          # full-width punctuation
    assert n("25 days") != n("26 days")


def test_score_needs_the_right_file_and_the_evidence():
    q = eval_kb.Question(id="t", lang="en", type="fact", query="?", document="a.md",
                         evidence="25 days of annual leave")
    results = [
        {"filename": "b.md", "text": "25 days of annual leave"},      # wrong document
        {"filename": "a.md", "text": "unrelated chunk"},              # right document only
        {"filename": "a.md", "text": "receive 25 days\nof annual   leave per year"},
    ]
    assert eval_kb.score(q, results) == (3, 2)
    assert eval_kb.score(q, results[:2]) == (None, 2)
    assert eval_kb.score(q, []) == (None, None)


def test_report_metrics():
    qs = [eval_kb.Question(id=f"q{i}", lang="en", type="fact", query="?", document="a.md",
                           evidence="x") for i in range(4)]
    rep = eval_kb.Report(top_k=5, modes=("bm25",), questions=qs)
    for q, rank in zip(qs, [1, 2, None, 5]):
        rep.outcomes[(q.id, "bm25")] = eval_kb.Outcome(rank, rank, [], 1.0)
    s = rep.scores("en", "bm25")
    assert s["n"] == 4
    assert s["recall"] == pytest.approx(3 / 4)
    assert s["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 5) / 4)
    assert [q.id for q in rep.misses("bm25")] == ["q2"]


# --- the whole harness against a stand-in that follows the API contract -----------------

UNREACHABLE = "en-03"   # the stand-in stores no chunk holding this evidence
HYBRID_MISS = "zh-02"   # hybrid search returns only other documents for this one


class _ContractStandIn(http.server.BaseHTTPRequestHandler):
    """Just enough of the knowledge-base API (as the contract defines it) to drive
    eval_kb end to end with a known outcome: each document's chunks are the evidence strings
    of its questions plus a filler chunk; bm25 ranks the right chunk 1st, vector 2nd,
    hybrid 1st, except for UNREACHABLE and HYBRID_MISS."""

    collections: dict = {}
    uploads: list = []
    unavailable = 0  # answer this many uploads with 503, like a daemon still loading its model

    def log_message(self, *args):
        pass

    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status, message):
        self._send(status, {"error": {"message": message, "type": "invalid_request_error",
                                      "param": None, "code": None}})

    def _body(self):
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def _authorised(self):
        if self.headers.get("Authorization") != "Bearer test-key":
            self._error(401, "bad key")
            return False
        return True

    def do_POST(self):
        if not self._authorised():
            return
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        if url.path == "/v1/kb/collections":
            name = json.loads(self._body())["name"]
            if name in self.collections:
                return self._error(409, "exists")
            self.collections[name] = {}
            return self._send(201, {"name": name, "created_at": 0, "documents": 0, "chunks": 0})
        if parts[:3] == ["v1", "kb", "collections"] and parts[4:] == ["documents"]:
            if _ContractStandIn.unavailable > 0:
                _ContractStandIn.unavailable -= 1
                self._body()
                return self._error(503, "embedding model is loading")
            coll, lang = parts[3], parts[3].rsplit("-", 1)[1]
            filename = urllib.parse.parse_qs(url.query)["filename"][0]
            body = self._body()
            self.uploads.append((filename, self.headers["Content-Type"], len(body)))
            texts = [f"Section text. {q.evidence} More text." for q in QUESTIONS
                     if q.lang == lang and q.document == filename and q.id != UNREACHABLE]
            texts.append("Filler paragraph without any answer.")
            doc_id = f"d{len(self.uploads)}"
            chunks = [{"chunk_id": f"{doc_id}_{i}", "ordinal": i, "text": t, "page": None,
                       "heading": None} for i, t in enumerate(texts)]
            self.collections[coll][doc_id] = {"filename": filename, "chunks": chunks}
            return self._send(201, {"id": doc_id, "collection": coll, "filename": filename,
                                    "kind": "text", "title": None, "bytes": len(body),
                                    "chunks": len(chunks), "pages": None, "created_at": 0,
                                    "replaced": False})
        if url.path == "/v1/kb/search":
            req = json.loads(self._body())
            (coll,) = req["collections"]
            q = next(q for q in QUESTIONS if q.query == req["query"])
            docs = self.collections[coll]
            mine = next(d for d in docs.values() if d["filename"] == q.document)
            others = [d for d in docs.values() if d["filename"] != q.document]
            hit = next((c for c in mine["chunks"] if q.evidence in c["text"]), mine["chunks"][-1])
            fill = [{"filename": d["filename"], **d["chunks"][-1]} for d in others]
            results = fill[:req["top_k"] - 1]
            if not (q.id == HYBRID_MISS and req["mode"] == "hybrid"):
                results.insert(1 if req["mode"] == "vector" else 0,
                               {"filename": q.document, **hit})
            results = [{"document_id": "d", "collection": coll, "score": 1.0, **r}
                       for r in results[:req["top_k"]]]
            return self._send(200, {"results": results})
        self._error(404, "no route")

    def do_GET(self):
        if not self._authorised():
            return
        parts = self.path.strip("/").split("/")
        doc = self.collections[parts[3]][parts[5]]
        self._send(200, {"id": parts[5], "filename": doc["filename"], "chunks": doc["chunks"]})

    def do_DELETE(self):
        if not self._authorised():
            return
        name = self.path.strip("/").split("/")[3]
        self.collections.pop(name, None)
        self._send(200, {"name": name, "deleted": True})


@pytest.fixture
def stand_in():
    _ContractStandIn.collections = {"gold-en": {}}  # exists already: must be replaced
    _ContractStandIn.uploads = []
    _ContractStandIn.unavailable = 2
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ContractStandIn)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_harness_end_to_end_against_the_contract(stand_in, capsys):
    rc = eval_kb.main(["--url", stand_in, "--key", "test-key", "--no-external", "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    rep = json.loads(out.out)
    n_en = sum(q.lang == "en" for q in INTERNAL)
    n_zh = sum(q.lang == "zh" for q in INTERNAL)
    r = rep["results"]
    # en: one question is unreachable, so it misses in every mode.
    assert r["en"]["bm25"]["recall"] == pytest.approx((n_en - 1) / n_en)
    assert r["en"]["bm25"]["mrr"] == pytest.approx((n_en - 1) / n_en)
    assert r["en"]["vector"]["mrr"] == pytest.approx((n_en - 1) / n_en / 2)
    assert r["zh"]["bm25"]["recall"] == r["zh"]["vector"]["recall"] == 1.0
    assert r["zh"]["hybrid"]["recall"] == pytest.approx((n_zh - 1) / n_zh)
    assert rep["unreachable"] == [UNREACHABLE]
    misses = {m["id"]: m for m in rep["misses"]["questions"]}
    assert set(misses) == {UNREACHABLE, HYBRID_MISS}
    assert misses[UNREACHABLE]["reachable"] is False
    assert misses[UNREACHABLE]["document_rank"] == 1      # the filler of the right document
    assert misses[HYBRID_MISS]["document_rank"] is None
    assert rep["ranks"]["en-01"] == {"bm25": 1, "vector": 2, "hybrid": 1}
    # Every gold document went up once, with the content type of its format, and the
    # collections were removed afterwards (no --keep).
    sent = {f: ct for f, ct, _ in _ContractStandIn.uploads}
    assert len(sent) == len(_ContractStandIn.uploads) == sum(
        len(d) for d in eval_kb.load_gold(external=False).documents.values())
    assert sent["差旅管理规定.docx"] == eval_kb.CONTENT_TYPES[".docx"]
    assert sent["leave-policy.md"] == "text/markdown"
    assert _ContractStandIn.collections == {}


def test_harness_table_lists_the_misses(stand_in, capsys):
    assert eval_kb.main(["--url", stand_in, "--key", "test-key", "--no-external",
                         "--lang", "zh", "--modes", "bm25,hybrid"]) == 0
    out = capsys.readouterr().out
    assert "recall@5" in out and "zh      hybrid" in out and "vector" not in out
    assert f"{HYBRID_MISS} [" in out and "document not in the top k" in out


def test_harness_gives_up_on_a_daemon_that_stays_unavailable(stand_in):
    _ContractStandIn.unavailable = 10**6
    client = eval_kb.KbClient(stand_in, "test-key", None, unavailable_wait=1)
    gold = eval_kb.load_gold(external=False, langs=("en",))
    with pytest.raises(eval_kb.ApiError) as e:
        eval_kb.evaluate(client, gold)
    assert e.value.status == 503 and "embedding model is loading" in str(e.value)


def test_harness_reports_a_rejected_key_in_one_line(stand_in, capsys):
    assert eval_kb.main(["--url", stand_in, "--key", "wrong", "--no-external"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("eval-kb: error: ") and "401" in err[0]
