"""End-to-end tests of the knowledge base: collections and documents over HTTPS, every format,
replacement, scopes (directly and through RAG chat), citations, the `edgeseek kb` CLI, the two
Debian PDF manuals, and a short kill -9 durability run."""

import io
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import BIN, ROOT
from test_api import Server, MODEL

DEBIAN_PDFS = [Path("/usr/share/doc/libtasn1-doc/libtasn1.pdf"),
               Path("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf")]

HR_MD = """# Leave policy

## Annual leave

Full-time employees receive 25 days of annual leave per calendar year. Unused days may be
carried over until 31 March of the following year.

## Sick leave

Employees who are ill must inform their manager before 10:00 on the first day of absence.
A medical certificate is required from the fourth day.
"""

FINANCE_TXT = """Expense reimbursement procedure

Receipts must be submitted within 30 days through the finance portal. Expenses above 500 EUR
need the approval of the cost-centre owner. The confidential budget code is ZEBRA-7731.
"""

ZH_HTML = """<html><head><title>差旅管理办法</title><script>var x = "不应出现";</script></head>
<body><h1>差旅管理办法</h1><h2>住宿标准</h2>
<p>员工出差时，一线城市住宿标准为每晚六百元，其他城市为每晚四百元。</p>
<h2>交通</h2><ul><li>高铁二等座可直接报销。</li><li>飞机经济舱需要部门经理审批。</li></ul>
</body></html>"""


def docx_bytes(paragraphs):
    """A minimal valid DOCX: [(style or None, text)]."""
    body = "".join(
        (f'<w:p><w:pPr><w:pStyle w:val="{style}"/></w:pPr>' if style else "<w:p>")
        + f'<w:r><w:t xml:space="preserve">{text}</w:t></w:r></w:p>'
        for style, text in paragraphs)
    doc = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
           '<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
           f"<w:body>{body}</w:body></w:document>")
    ct = ('<?xml version="1.0" encoding="UTF-8"?>'
          '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
          '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
          '<Default Extension="xml" ContentType="application/xml"/>'
          '<Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-'
          'officedocument.wordprocessingml.document.main+xml"/></Types>')
    rels = ('<?xml version="1.0" encoding="UTF-8"?>'
            '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
            'relationships/officeDocument" Target="word/document.xml"/></Relationships>')
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("[Content_Types].xml", ct)
        z.writestr("_rels/.rels", rels)
        z.writestr("word/document.xml", doc)
    return buf.getvalue()


DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("kb"))
    s.wait_ready()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def admin(server):
    return server.key("kb-admin", "kb:write:*,chat")


def h(key, **extra):
    return {"Authorization": f"Bearer {key}", **extra}


def wait_kb(server, key, timeout=120):
    import time
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = server.http.get("/v1/kb/collections", headers=h(key))
        if r.status_code == 200:
            return
        assert r.status_code == 503, r.text
        time.sleep(0.2)
    raise AssertionError("knowledge base not ready")


def upload(server, key, coll, name, data, ctype, via_header=False):
    if isinstance(data, str):
        data = data.encode()
    if via_header:
        from urllib.parse import quote
        return server.http.post(f"/v1/kb/collections/{coll}/documents", content=data,
                                headers=h(key, **{"Content-Type": ctype, "X-Filename": quote(name)}))
    return server.http.post(f"/v1/kb/collections/{coll}/documents", params={"filename": name},
                            content=data, headers=h(key, **{"Content-Type": ctype}))


@pytest.fixture(scope="module")
def loaded(server, admin):
    wait_kb(server, admin)
    for c in ("hr", "finance", "travel"):
        r = server.http.post("/v1/kb/collections", json={"name": c}, headers=h(admin))
        assert r.status_code == 201, r.text
    docs = {}
    for coll, name, data, ct in [
        ("hr", "leave.md", HR_MD, "text/markdown"),
        ("finance", "expenses.txt", FINANCE_TXT, "text/plain; charset=utf-8"),
        ("travel", "差旅.html", ZH_HTML, "text/html"),
        ("hr", "handbook.docx", docx_bytes([("Title", "Employee handbook"),
                                            ("Heading1", "Working hours"),
                                            (None, "Core hours are 10:00 to 15:00 on weekdays."),
                                            ("Heading1", "远程办公"),
                                            (None, "员工每周可以远程办公两天，需提前告知直属经理。")]),
         DOCX),
    ]:
        r = upload(server, admin, coll, name, data, ct, via_header=name.endswith(".html"))
        assert r.status_code == 201, (name, r.text)
        docs[name] = r.json()
    return docs


def test_collections_and_documents(server, admin, loaded):
    r = server.http.get("/v1/kb/collections", headers=h(admin))
    cols = {c["name"]: c for c in r.json()["data"]}
    assert set(cols) >= {"hr", "finance", "travel"}
    assert cols["hr"]["documents"] == 2
    assert cols["hr"]["chunks"] >= 2
    d = loaded["leave.md"]
    assert d["collection"] == "hr" and d["kind"] == "markdown" and d["chunks"] >= 1
    assert d["replaced"] is False
    listed = server.http.get("/v1/kb/collections/hr/documents", headers=h(admin)).json()["data"]
    assert {x["filename"] for x in listed} == {"leave.md", "handbook.docx"}
    full = server.http.get(f"/v1/kb/collections/hr/documents/{d['id']}", headers=h(admin)).json()
    text = " ".join(c["text"] for c in full["chunks"])
    assert "25 days of annual leave" in text and "medical certificate" in text
    headings = {c["heading"] for c in full["chunks"]}
    assert any(hd and "Annual leave" in hd for hd in headings), headings
    # The HTML's script never reaches the index; its filename came percent-encoded in a header.
    zh = loaded["差旅.html"]
    assert zh["filename"] == "差旅.html" and zh["title"] == "差旅管理办法"
    full = server.http.get(f"/v1/kb/collections/travel/documents/{zh['id']}", headers=h(admin)).json()
    text = "".join(c["text"] for c in full["chunks"])
    assert "每晚六百元" in text and "不应出现" not in text
    # Another collection's document id does not resolve here.
    r = server.http.get(f"/v1/kb/collections/finance/documents/{d['id']}", headers=h(admin))
    assert r.status_code == 404


def test_search_english_chinese_and_docx(server, admin, loaded):
    def top(colls, q):
        r = server.http.post("/v1/kb/search", json={"collections": colls, "query": q, "top_k": 3},
                             headers=h(admin))
        assert r.status_code == 200, r.text
        return r.json()["results"]

    res = top(["hr"], "How many vacation days do full-time staff get?")
    assert res and res[0]["filename"] == "leave.md" and "25 days" in res[0]["text"]
    for k in ("document_id", "filename", "chunk_id", "text", "score", "page", "heading"):
        assert k in res[0]
    res = top(["travel"], "一线城市出差住宿标准是多少？")
    assert res and "六百元" in res[0]["text"]
    res = top(["hr"], "远程办公每周几天")
    assert res and res[0]["filename"] == "handbook.docx" and "两天" in res[0]["text"]
    # Filtering is strict: the finance text never appears in an hr search.
    res = top(["hr"], "confidential budget code ZEBRA-7731")
    assert all("ZEBRA" not in x["text"] for x in res)


def test_replace_is_atomic_and_delete(server, admin, loaded):
    r = upload(server, admin, "finance", "expenses.txt",
               FINANCE_TXT.replace("30 days", "45 days"), "text/plain")
    assert r.status_code == 201 and r.json()["replaced"] is True
    new = r.json()
    listed = server.http.get("/v1/kb/collections/finance/documents", headers=h(admin)).json()["data"]
    assert [x["id"] for x in listed] == [new["id"]]
    old = server.http.get(f"/v1/kb/collections/finance/documents/{loaded['expenses.txt']['id']}",
                          headers=h(admin))
    assert old.status_code == 404
    res = server.http.post("/v1/kb/search", json={"collections": ["finance"],
                                                  "query": "receipts submitted within days"},
                           headers=h(admin)).json()["results"]
    assert any("45 days" in x["text"] for x in res)
    assert not any("30 days" in x["text"] for x in res)
    # Delete a document, then a whole collection.
    tmp = upload(server, admin, "finance", "temp.md", "# Temp\n\nshort lived", "text/markdown").json()
    r = server.http.delete(f"/v1/kb/collections/finance/documents/{tmp['id']}", headers=h(admin))
    assert r.status_code == 200 and r.json()["deleted"] is True
    assert server.http.delete(f"/v1/kb/collections/finance/documents/{tmp['id']}",
                              headers=h(admin)).status_code == 404
    assert server.http.post("/v1/kb/collections", json={"name": "scratch"},
                            headers=h(admin)).status_code == 201
    upload(server, admin, "scratch", "a.md", "# A\n\nscratch text", "text/markdown")
    assert server.http.delete("/v1/kb/collections/scratch", headers=h(admin)).status_code == 200
    r = server.http.get("/v1/kb/collections/scratch/documents", headers=h(admin))
    assert r.status_code == 404


def test_bad_documents_get_clear_errors(server, admin, loaded):
    def err(r, status):
        assert r.status_code == status, r.text
        e = r.json()["error"]
        assert e["message"]
        return e["message"]

    err(upload(server, admin, "hr", "x.png", b"\x89PNG", "image/png"), 415)
    err(upload(server, admin, "hr", "bad.pdf", b"%PDF-1.4 this is not a pdf", "application/pdf"), 400)
    err(upload(server, admin, "hr", "bad.docx", b"PK not a zip", DOCX), 400)
    err(upload(server, admin, "hr", "empty.txt", b"   \n", "text/plain"), 400)
    err(server.http.post("/v1/kb/collections/hr/documents", content=b"x",
                         headers=h(admin, **{"Content-Type": "text/plain"})), 400)  # no filename
    err(upload(server, admin, "nope", "a.txt", "text", "text/plain"), 404)
    err(server.http.post("/v1/kb/collections", json={"name": "bad name!"}, headers=h(admin)), 400)
    err(server.http.post("/v1/kb/collections", json={"name": "hr"}, headers=h(admin)), 409)
    err(server.http.post("/v1/kb/search", json={"collections": ["hr"], "query": ""},
                         headers=h(admin)), 400)
    err(server.http.post("/v1/kb/search", json={"collections": ["hr"], "query": "x", "bogus": 1},
                         headers=h(admin)), 400)
    # Nothing partial was stored by the failures.
    listed = server.http.get("/v1/kb/collections/hr/documents", headers=h(admin)).json()["data"]
    assert {x["filename"] for x in listed} == {"leave.md", "handbook.docx"}


def test_scopes_direct_and_through_chat(server, admin, loaded):
    hr = server.key("hr-reader", "kb:read:hr,chat")
    # Listing shows only readable collections.
    names = {c["name"] for c in server.http.get("/v1/kb/collections", headers=h(hr)).json()["data"]}
    assert names == {"hr"}
    r = server.http.post("/v1/kb/search", json={"collections": ["finance"], "query": "budget code"},
                         headers=h(hr))
    assert r.status_code == 403
    r = server.http.get("/v1/kb/collections/finance/documents", headers=h(hr))
    assert r.status_code == 403
    assert upload(server, hr, "hr", "w.md", "# W\n\nx", "text/markdown").status_code == 403
    # Through chat: naming finance is refused; retrieving from hr never yields finance text.
    body = {"model": MODEL, "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "user", "content": "What is the confidential budget code?"}]}
    r = server.http.post("/v1/chat/completions", headers=h(hr),
                         json={**body, "knowledge": {"collections": ["finance"]}})
    assert r.status_code == 403, r.text
    r = server.http.post("/v1/chat/completions", headers=h(hr),
                         json={**body, "knowledge": {"collections": ["hr"], "top_k": 5}})
    assert r.status_code == 200, r.text
    cites = r.json()["citations"]
    assert cites and all(c["collection"] == "hr" for c in cites)
    assert all("ZEBRA" not in c["text"] for c in cites)


def test_me_lists_exactly_the_collections_and_capabilities_a_key_has(server, admin, loaded):
    def me(key):
        r = server.http.get("/v1/me", headers=h(key))
        assert r.status_code == 200, r.text
        return r.json()

    hr = me(server.key("me-hr", "kb:read:hr,kb:write:travel,chat"))
    assert hr["method"] == "api_key" and hr["name"] == "me-hr" and re.fullmatch(r"[0-9a-f]{12}", hr["id"])
    assert sorted(hr["collections"], key=lambda c: c["name"]) == [
        {"name": "hr", "read": True, "write": False},
        {"name": "travel", "read": True, "write": True}]
    assert hr["can"] == {"chat": True, "embeddings": False, "web_search": False, "admin": False,
                         "knowledge": True, "create_collections": True}
    assert hr["knowledge"] is True and hr["agents"] == []
    # Everything is what the endpoint it describes would answer.
    listed = {c["name"] for c in server.http.get("/v1/kb/collections",
                                                 headers=h(server.key("me-hr2", "kb:read:hr"))).json()["data"]}
    assert listed == {"hr"}
    # A chat-only key learns nothing about collections and is offered no knowledge controls.
    chat_only = me(server.key("me-chat", "chat,agent:helpdesk"))
    assert chat_only["collections"] == [] and chat_only["can"]["knowledge"] is False
    assert chat_only["can"]["create_collections"] is False and chat_only["agents"] == ["helpdesk"]
    # Wildcards and admin see every collection, writable.
    for key in (admin, server.key("me-admin", "admin")):
        every = me(key)
        assert {c["name"] for c in every["collections"]} == {"hr", "finance", "travel"}
        assert all(c["write"] for c in every["collections"])
    assert me(server.key("me-admin2", "admin"))["can"]["admin"] is True
    assert server.http.get("/v1/me").status_code == 401


def test_rag_chat_citations_resolve(server, admin, loaded):
    body = {"model": MODEL, "max_tokens": 8, "temperature": 0,
            "messages": [{"role": "user", "content": "How many days of annual leave do I get?"}],
            "knowledge": {"collections": ["hr", "travel"], "top_k": 3}}
    r = server.http.post("/v1/chat/completions", headers=h(admin), json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    cites = out["citations"]
    assert [c["index"] for c in cites] == list(range(1, len(cites) + 1))
    assert cites[0]["filename"] == "leave.md"
    # The retrieved text went into the prompt: far more prompt tokens than the question alone.
    plain = server.http.post("/v1/chat/completions", headers=h(admin),
                             json={k: v for k, v in body.items() if k != "knowledge"}).json()
    assert out["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"] + 20
    for c in cites:
        d = server.http.get(f"/v1/kb/collections/{c['collection']}/documents/{c['document_id']}",
                            headers=h(admin)).json()
        chunk = next(x for x in d["chunks"] if x["chunk_id"] == c["chunk_id"])
        assert chunk["text"] == c["text"] and d["filename"] == c["filename"]
    # Streaming: the first chunk carries the citations.
    with server.http.stream("POST", "/v1/chat/completions", headers=h(admin),
                            json={**body, "stream": True}) as s:
        first = next(l for l in s.iter_lines() if l.startswith("data: "))
    assert json.loads(first[6:])["citations"] == cites


def test_debian_pdfs_ingest_with_pages(server, admin, loaded):
    assert server.http.post("/v1/kb/collections", json={"name": "manuals"},
                            headers=h(admin)).status_code == 201
    for pdf in DEBIAN_PDFS:
        r = upload(server, admin, "manuals", pdf.name, pdf.read_bytes(), "application/pdf")
        assert r.status_code == 201, r.text
        d = r.json()
        assert d["pages"] and d["pages"] > 5 and d["chunks"] > 10, d
    r = server.http.post("/v1/kb/search", json={"collections": ["manuals"], "top_k": 3,
                                                 "query": "asn1_der_coding DER encoding"},
                         headers=h(admin)).json()["results"]
    assert r and r[0]["filename"] == "libtasn1.pdf" and r[0]["page"] >= 1


def test_cli_ingest_directory(server, admin, loaded, tmp_path):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.md").write_text("# Parking\n\nVisitors park in zone C.\n")
    (docs / "sub" / "b.txt").write_text("Badges are collected at reception.\n")
    (docs / "sub" / "c.html").write_text("<p>broken but fine</p>")
    (docs / "sub" / "d.pdf").write_bytes(b"not a pdf")
    (docs / "image.png").write_bytes(b"\x89PNG")
    p = subprocess.run([str(BIN), "kb", "ingest", "--dev", "--state-dir", str(server.state),
                        str(docs), "--collection", "facilities"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1, p.stderr
    assert "ingested 3 of 4 documents into `facilities`" in p.stdout
    assert "d.pdf" in p.stdout and "1 failed" in p.stdout
    listed = server.http.get("/v1/kb/collections/facilities/documents", headers=h(admin)).json()
    assert {x["filename"] for x in listed["data"]} == {"a.md", "b.txt", "c.html"}
    p = subprocess.run([str(BIN), "kb", "collections", "--dev", "--state-dir", str(server.state),
                        "--json"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert any(c["name"] == "facilities" and c["documents"] == 3
               for c in json.loads(p.stdout)["data"])


def test_filenames_limits_and_spool(server, admin, loaded, tmp_path):
    # Bidirectional controls and invisible characters in a file name: 400 naming `filename`,
    # in the query and in the X-Filename header alike.
    for name in ["invoice\u202etxt.md", "a\u200bb.txt", "a\u2066b.txt", "a\u061cb.txt"]:
        for via_header in (False, True):
            r = upload(server, admin, "hr", name, "Some text.", "text/plain", via_header=via_header)
            assert r.status_code == 400, (name, r.text)
            e = r.json()["error"]
            assert e["param"] == "filename" and "U+" in e["message"], e
    # Over the 64 MiB limit: declared (Content-Length) and streamed (chunked, no length).
    limit = 64 << 20
    r = server.http.post("/v1/kb/collections/hr/documents", params={"filename": "big.txt"},
                         content=b"a" * (limit + 1), headers=h(admin, **{"Content-Type": "text/plain"}))
    assert r.status_code == 413, r.text

    def chunks():
        piece = b"a," * (1 << 19)
        for _ in range(65):
            yield piece
    r = server.http.post("/v1/kb/collections/hr/documents", params={"filename": "big.txt"},
                         content=chunks(), headers=h(admin, **{"Content-Type": "text/plain"}))
    assert r.status_code == 413, r.text
    # A document under the limit goes through the spool, which is empty afterwards.
    r = upload(server, admin, "finance", "run.txt", "a," * 4_000, "text/plain")
    assert r.status_code == 201, r.text
    assert r.json()["chunks"] > 20
    spool = Path(server.state) / "spool"
    assert spool.is_dir() and list(spool.iterdir()) == []
    listed = server.http.get("/v1/kb/collections/hr/documents", headers=h(admin)).json()["data"]
    assert "big.txt" not in {x["filename"] for x in listed}
    # The CLI applies the same file-name rule before sending anything.
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "report\u202etxt.md").write_text("# Report\n\nText.\n")
    p = subprocess.run([str(BIN), "kb", "ingest", "--dev", "--state-dir", str(server.state),
                        str(docs), "--collection", "finance"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stderr
    assert "filename must not contain" in p.stdout and "U+202E" in p.stdout, p.stdout


def test_kill9_short(tmp_path):
    """A short version of scripts/kb-crash-test (100 iterations are run by hand)."""
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "kb_crash_test.py"),
                        "--state", str(tmp_path / "s"), "--iterations", "4", "--seed", "7"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["lost_or_partial"] == 0 and summary["acknowledged_documents"] > 0
