"""Audit records mirrored to journald with structured fields: the daemon runs as under systemd
(JOURNAL_STREAM set) in a private mount namespace whose /run/systemd/journal is a directory of
this test, where a socket of the test stands in for journald and receives what the daemon sends
over journald's native protocol. Every record arrives as one entry with its fields as journal
fields (AUDIT_KIND, AUDIT_KEY_ID, AUDIT_ROUTE, AUDIT_STATUS, …, SYSLOG_IDENTIFIER=edgeseek), the
same as in the audit file, and is not written a second time as a stderr line."""
import json
import os
import shutil
import socket
import time

from test_api import Server


def parse(data):
    """One datagram of journald's native protocol: `NAME=value\n`, or for values that may hold
    newlines `NAME\n` + 64-bit little-endian length + value + `\n`."""
    e, i = {}, 0
    while i < len(data):
        nl = data.index(b"\n", i)
        eq = data.find(b"=", i, nl)
        if eq >= 0:
            e[data[i:eq].decode()] = data[eq + 1:nl].decode()
            i = nl + 1
        else:
            name = data[i:nl].decode()
            n = int.from_bytes(data[nl + 1:nl + 9], "little")
            e[name] = data[nl + 9:nl + 9 + n].decode()
            i = nl + 9 + n + 1
    return e


def entries(sock, until, timeout=10):
    """Journal entries (dicts of field -> value) received until `until(entries)` holds."""
    got = []
    deadline = time.time() + timeout
    while time.time() < deadline and not until(got):
        sock.settimeout(max(0.05, deadline - time.time()))
        try:
            data = sock.recv(1 << 20)
        except socket.timeout:
            break
        if not data:
            continue
        got.append(parse(data))
    return got


def test_audit_records_reach_journald_as_fields(tmp_path, monkeypatch):
    if os.geteuid() != 0:
        raise AssertionError("this test needs root (a private mount namespace); CI runs as root")
    assert shutil.which("unshare"), "unshare (util-linux) is missing"
    journal = tmp_path / "journal"
    journal.mkdir()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(journal / "socket"))
    # The mount point must exist on the host; the mount itself stays in the namespace.
    os.makedirs("/run/systemd/journal", exist_ok=True)
    prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
              f'mount --bind "{journal}" /run/systemd/journal && exec "$@"', "sh"]
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    monkeypatch.setenv("EDGESEEK_TEST_LOG", "warn,edgeseek=info")
    s = Server(tmp_path / "state", prefix=prefix)
    try:
        s.wait_ready()
        key = s.key("journal-test", "chat")
        r = s.http.get("/v1/models", headers={"Authorization": f"Bearer {key}",
                                               "X-Request-Id": "journal-1"})
        assert r.status_code == 200
        bad = s.http.get("/v1/models", headers={"Authorization": "Bearer es-wrong",
                                                 "X-Request-Id": "journal-2"})
        assert bad.status_code == 401

        def both(es):
            ids = {e.get("AUDIT_REQUEST_ID") for e in es}
            return {"journal-1", "journal-2"} <= ids

        got = entries(sock, both)
        audit = [e for e in got if e.get("MESSAGE") == "audit"]
        by_id = {e.get("AUDIT_REQUEST_ID"): e for e in audit}
        assert {"journal-1", "journal-2"} <= set(by_id), got
        ok, refused = by_id["journal-1"], by_id["journal-2"]
        assert ok["SYSLOG_IDENTIFIER"] == "edgeseek" and ok["TARGET"] == "edgeseek::audit"
        assert ok["AUDIT_KIND"] == "api" and ok["AUDIT_ROUTE"] == "/v1/models"
        assert ok["AUDIT_STATUS"] == "200" and ok["AUDIT_KEY_NAME"] == "journal-test"
        assert refused["AUDIT_KIND"] == "auth_failure" and refused["AUDIT_STATUS"] == "401"
        # The journal entry is the record in the file: same sequence number and hash.
        records = {}
        for f in sorted((s.state / "audit").glob("*.jsonl")):
            for line in f.read_text().splitlines():
                rec = json.loads(line)
                records[rec.get("request_id")] = rec
        for rid, e in (("journal-1", ok), ("journal-2", refused)):
            assert e["AUDIT_SEQ"] == str(records[rid]["seq"])
            assert e["AUDIT_HASH"] == records[rid]["hash"]
        # Once in the journal, not again on stderr (which systemd also sends to the journal).
        # (The per-request log line stays; the audit line, with its hash, does not.)
        logs = s.logs()
        assert "journal-1" in logs and ok["AUDIT_HASH"] not in logs
    finally:
        s.stop()
        sock.close()
