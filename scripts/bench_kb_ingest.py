"""Knowledge-base ingestion and end-to-end search through the real daemon (`scripts/bench-kb`).

Starts `edgeseek serve` (the binary given, normally the release build) with the real embedding
model, uploads the gold-set documents (tests/kb/gold, English and Chinese, md/txt/html/docx) and
the two Debian PDF manuals over HTTPS, one at a time, and reports documents/s and chunks/s; then
times `/v1/kb/search` (hybrid, query embedding included) for the gold questions. Prints one JSON
object.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))


PDFS = [Path("/usr/share/doc/libtasn1-doc/libtasn1.pdf"),
        Path("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf")]
TYPES = {".md": "text/markdown", ".txt": "text/plain", ".html": "text/html",
         ".pdf": "application/pdf",
         ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--rounds", type=int, default=3, help="upload the whole set this many times")
    a = ap.parse_args()
    import test_api  # noqa: E402  (reads conftest.BIN when it starts a server)
    test_api.BIN = Path(a.bin)
    docs = sorted(p for p in (ROOT / "tests" / "kb" / "gold").rglob("*")
                  if p.suffix in TYPES and p.is_file()) + [p for p in PDFS if p.exists()]
    questions = json.loads((ROOT / "tests" / "kb" / "gold" / "questions.json").read_text())
    questions = questions["questions"]
    with tempfile.TemporaryDirectory() as tmp:
        srv = test_api.Server(Path(tmp) / "s")
        try:
            key = srv.key("bench", "kb:write:*")
            h = {"Authorization": f"Bearer {key}"}
            while srv.http.get("/v1/kb/collections", headers=h).status_code != 200:
                time.sleep(0.2)
            srv.http.post("/v1/kb/collections", json={"name": "bench"}, headers=h)
            n_docs = n_chunks = 0
            nbytes = 0
            t0 = time.perf_counter()
            for r in range(a.rounds):
                for d in docs:
                    body = d.read_bytes()
                    resp = srv.http.post("/v1/kb/collections/bench/documents",
                                         params={"filename": f"r{r}-{d.name}"}, content=body,
                                         headers={**h, "Content-Type": TYPES[d.suffix]})
                    assert resp.status_code == 201, (d, resp.text)
                    n_docs += 1
                    n_chunks += resp.json()["chunks"]
                    nbytes += len(body)
            wall = time.perf_counter() - t0
            lat = []
            for q in questions:
                t = time.perf_counter()
                resp = srv.http.post("/v1/kb/search", headers=h,
                                     json={"collections": ["bench"], "query": q["query"],
                                           "top_k": 5})
                lat.append((time.perf_counter() - t) * 1000)
                assert resp.status_code == 200, resp.text
        finally:
            srv.stop()
    lat.sort()
    print(json.dumps({
        "documents": n_docs, "chunks": n_chunks, "megabytes": round(nbytes / 1e6, 2),
        "seconds": round(wall, 2),
        "documents_per_s": round(n_docs / wall, 2), "chunks_per_s": round(n_chunks / wall, 1),
        "search_http_p50_ms": round(statistics.median(lat), 2),
        "search_http_p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 2),
        "queries": len(lat),
    }))


if __name__ == "__main__":
    main()
