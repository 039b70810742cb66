"""The web-side test services of webtools.py, each on its own: a real SearXNG over the fixture
site, a real MCP server, and the SSRF network namespace. Later tests run the daemon against
them; these prove the services behave as those tests will assume."""

import asyncio
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import httpx
import pytest

import webtools
from webtools import mcp_server, searxng, site, ssrf_lab


def get_json(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.load(r)


# --------------------------------------------------------------------------------------------
# fixture site + SearXNG


@pytest.fixture(scope="module")
def web():
    with site() as s, searxng(s) as sx:
        yield s, sx


def test_site_search_endpoint_and_pages():
    with site() as s:
        r = get_json(f"{s.url}/search?q=WireGuard+profile")
        assert [x["url"] for x in r["results"]] == [s.page("vpn-setup").url]
        assert get_json(f"{s.url}/search?q=nothing+like+this")["results"] == []
        status, headers, body = webtools.http_get(s.page("parking").url)
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert b"<title>Parking garage access</title>" in body and b"level -2" in body
        zh = get_json(f"{s.url}/search?q={urllib.request.quote('访客 密码')}")
        assert [x["url"] for x in zh["results"]] == [s.page("wifi-zh").url]
        assert get_json(f"{s.url}/search?q={urllib.request.quote('访客 停车')}")["results"] == []
        assert webtools.http_get(f"{s.url}/pages/missing.html")[0] == 404
        assert s.requests[-1] == "/pages/missing.html"


def test_searxng_answers_from_the_fixture_site(web):
    s, sx = web
    print(f"searxng start-up: {sx.startup_s:.2f}s")
    for query, slug in [("wireguard vpn", "vpn-setup"), ("toner cartridges", "printer-floor3"),
                        ("receipt pdf", "expenses")]:
        r = get_json(f"{sx}/search?q={urllib.request.quote(query)}&format=json")
        assert r["unresponsive_engines"] == [], r
        page = s.page(slug)
        assert [(x["url"], x["title"], x["content"]) for x in r["results"]] == \
            [(page.url, page.title, page.snippet)], r["results"]
        assert r["results"][0]["engines"] == ["fixture"]
        # SearXNG really asked the site (not a cache): the query reached its search endpoint.
        assert query in s.searches()


def test_searxng_chinese_query(web):
    s, sx = web
    r = get_json(f"{sx}/search?q={urllib.request.quote('无线网络 密码')}&format=json")
    page = s.page("wifi-zh")
    assert [(x["url"], x["title"], x["content"]) for x in r["results"]] == \
        [(page.url, page.title, page.snippet)], r


def test_searxng_returns_nothing_for_a_query_no_page_matches(web):
    s, sx = web
    r = get_json(f"{sx}/search?q=zebra+quantum+banana&format=json")
    # No results, and not because the engine failed: it answered, with nothing.
    assert r["results"] == [] and r["unresponsive_engines"] == [], r
    assert "zebra quantum banana" in s.searches()


def test_searxng_several_results_and_html_format(web):
    s, sx = web
    r = get_json(f"{sx}/search?q=office&format=json")
    assert {x["url"] for x in r["results"]} == {p.url for p in s.search("office")}
    assert len(r["results"]) >= 2
    with urllib.request.urlopen(f"{sx}/search?q=printer", timeout=30) as h:
        assert h.status == 200
        assert s.page("printer-floor3").url in h.read().decode()


def test_searxng_has_one_engine_and_talks_only_to_the_fixture_site(web):
    s, sx = web
    get_json(f"{sx}/search?q=parking&format=json")
    cfg = get_json(f"{sx}/config")
    assert [e["name"] for e in cfg["engines"]] == ["fixture"]
    events = sx.network_events()
    # The audit hook sees the engine's connections (so an empty "foreign" list means something)
    assert ["127.0.0.1", s.port] in [e.get("address") for e in events if e["event"] == "connect"]
    assert sx.foreign_network_events({s.port}) == []
    log = sx.log.read_text(errors="replace")
    for bad in ("Traceback", "socks", "HTTPError", "Name or service not known", "proxy"):
        assert bad not in log, f"{bad!r} in the SearXNG log:\n{log}"


# --------------------------------------------------------------------------------------------
# MCP server (fastmcp client)


@pytest.fixture(scope="module")
def mcp():
    with mcp_server() as m:
        yield m


def run(coro):
    return asyncio.run(coro)


def test_mcp_lists_the_fixture_tools(mcp):
    from fastmcp import Client

    async def go():
        async with Client(mcp.url) as c:
            return await c.list_tools()

    print(f"mcp start-up: {mcp.startup_s:.2f}s")
    tools = {t.name: t for t in run(go())}
    assert set(tools) == {"lookup_order", "add", "slow", "fail"}
    schema = tools["add"].input_schema
    assert schema["properties"] == {"a": {"type": "integer"}, "b": {"type": "integer"}}
    assert sorted(schema["required"]) == ["a", "b"]
    assert tools["lookup_order"].description.startswith("Look up an order")


def test_mcp_calls_and_call_log(mcp):
    from fastmcp import Client
    from fastmcp.exceptions import ToolError

    url, calls_log = mcp

    async def go():
        async with Client(url) as c:
            added = await c.call_tool("add", {"a": 2, "b": 40})
            order = await c.call_tool("lookup_order", {"order_id": "A-1001"})
            missing = await c.call_tool("lookup_order", {"order_id": "Z-9"})
            failed = await c.call_tool("fail", {}, raise_on_error=False)
            with pytest.raises(ToolError, match="always raises"):
                await c.call_tool("fail", {})
            return added, order, missing, failed

    before = len(mcp.calls())
    added, order, missing, failed = run(go())
    assert added.data == 42 and not added.is_error
    assert order.data == webtools.lookup_order_text("A-1001") == \
        "order A-1001: shipped, 3 items, carrier SF Express, eta 2026-12-09"
    assert missing.data == "order Z-9: not found"
    assert failed.is_error and "always raises" in failed.content[0].text
    calls = mcp.calls()[before:]
    starts = [c for c in calls if c["event"] == "start"]
    assert [(c["tool"], c["args"]) for c in starts] == [
        ("add", {"a": 2, "b": 40}), ("lookup_order", {"order_id": "A-1001"}),
        ("lookup_order", {"order_id": "Z-9"}), ("fail", {}), ("fail", {})]
    ends = {c["call"]: c for c in calls if c["event"] == "end"}
    assert set(ends) == {c["call"] for c in starts}
    assert ends[starts[0]["call"]]["result"] == 42
    assert [ends[c["call"]]["ok"] for c in starts] == [True, True, True, False, False]
    assert calls_log == Path(mcp.calls_log)


def test_mcp_slow_finishes_or_is_cancelled(mcp):
    from fastmcp import Client

    async def go():
        async with Client(mcp.url) as c:
            done = await c.call_tool("slow", {"seconds": 0.2})
            t0 = time.monotonic()
            with pytest.raises(Exception, match="timed out"):
                await c.call_tool("slow", {"seconds": 30}, timeout=0.5)
            return done, time.monotonic() - t0

    before = len(mcp.calls())
    done, waited = run(go())
    assert done.data == "slept 0.2 seconds"
    assert waited < 10
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        calls = mcp.calls()[before:]
        if any(c["event"] == "cancel" for c in calls):
            break
        time.sleep(0.05)
    events = [(c["event"], c["args"]["seconds"] if c["event"] == "start" else None)
              for c in calls]
    assert events == [("start", 0.2), ("end", None), ("start", 30.0), ("cancel", None)], calls
    assert calls[3]["call"] == calls[2]["call"]


def test_mcp_bearer_token():
    from fastmcp import Client

    with mcp_server(token="fixture-token-123") as m:
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                           "clientInfo": {"name": "t", "version": "1"}}}
        hdrs = {"Accept": "application/json, text/event-stream"}
        r = httpx.post(m.url, json=init, headers=hdrs, timeout=10)
        assert r.status_code == 401
        r = httpx.post(m.url, json=init, timeout=10,
                       headers={**hdrs, "Authorization": "Bearer wrong"})
        assert r.status_code == 401

        async def go():
            async with Client(m.url, auth="fixture-token-123") as c:
                return await c.call_tool("add", {"a": 1, "b": 2})

        assert run(go()).data == 3
        assert [c["tool"] for c in m.calls()] == ["add", "add"]


# --------------------------------------------------------------------------------------------
# SSRF lab


def netns_list():
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                          check=True).stdout


def test_ssrf_lab_reachable_inside_only():
    with ssrf_lab() as lab:
        print(f"ssrf_lab start-up: {lab.startup_s:.2f}s")
        assert lab.ns in netns_list()
        assert lab.prefix == ["ip", "netns", "exec", lab.ns]
        expect = [(lab.private, lab.private), ("intranet.test", lab.private),
                  (lab.private2, lab.private2), ("intranet2.test", lab.private2),
                  (lab.linklocal, lab.linklocal), ("linklocal.test", lab.linklocal),
                  (lab.ula, lab.ula), ("ula.test", lab.ula), ("127.0.0.1", "127.0.0.1"),
                  ("::1", "::1")]
        for host, addr in expect:
            r = lab.fetch(lab.url(host, "/doc"))
            assert r.get("status") == 200, (host, r)
            assert f"Served on {addr}, path /doc." in r["body"] and lab.marker in r["body"]
        # localhost is in the hosts file (for both families: which one answers is the resolver's
        # choice)
        assert lab.fetch(lab.url("localhost", "/"))["status"] == 200
        hops = lab.fetch(lab.url(lab.private2, "/redirect?to=" + lab.url("intranet.test", "/x")))
        assert hops["status"] == 302 and hops["location"] == lab.url("intranet.test", "/x")
        assert lab.fetch(lab.url("linklocal.test", "/redirect?to=/y&status=301"))["status"] == 301
        assert len(lab.fetch(lab.url(lab.private, "/bytes?n=5000"))["body"]) == 5000
        seen = [(q["local"], q["path"]) for q in lab.requests()]
        assert (lab.private2, "/redirect?to=" + lab.url("intranet.test", "/x")) in seen
        assert (lab.ula, "/doc") in seen
        # Names outside the hosts file do not resolve (no DNS server in the namespace).
        assert "error" in lab.fetch("http://nowhere.example:8080/", timeout=5)
        # The namespace has no route out: only its own networks.
        routes = lab.run(["ip", "-4", "route"]).stdout
        assert "default" not in routes and "10.231.0.0/24" in routes
        # The host's namespace does not hold these addresses or the interface, and routes
        # 10.231.0.2 like any foreign address (never "local"). No packet is sent to check this:
        # from the host it would leave over the default route.
        host_addrs = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
        for a in lab.addrs.values():
            assert f" {a}/" not in host_addrs
        assert subprocess.run(["ip", "link", "show", "lab0"], capture_output=True).returncode != 0
        route = subprocess.run(["ip", "route", "get", lab.private], capture_output=True,
                               text=True).stdout
        assert not route.startswith("local") and "lab0" not in route
    assert lab.ns not in netns_list()
    assert not Path(f"/etc/netns/{lab.ns}").exists()


def test_ssrf_lab_cleans_up_after_a_failure_and_kills_its_processes():
    with pytest.raises(RuntimeError, match="test body failed"):
        with ssrf_lab() as lab:
            sleeper = lab.popen(["sleep", "300"])
            deadline = time.monotonic() + 10
            while subprocess.run(["ip", "netns", "identify", str(sleeper.pid)],
                                 capture_output=True, text=True).stdout.strip() != lab.ns:
                assert time.monotonic() < deadline, "the process never entered the namespace"
                time.sleep(0.05)
            raise RuntimeError("test body failed")
    assert lab.ns not in netns_list()
    assert not Path(f"/etc/netns/{lab.ns}").exists()
    assert sleeper.wait(timeout=10) == -9


def test_ssrf_lab_removes_namespaces_a_killed_run_left():
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that no longer runs, like that of a SIGKILLed pytest
    stale = f"edgeseek-lab-{gone.pid}-dead00"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    Path(f"/etc/netns/{stale}").mkdir(parents=True)
    try:
        with ssrf_lab() as lab:
            assert stale not in netns_list() and lab.ns in netns_list()
            assert not Path(f"/etc/netns/{stale}").exists()
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)
        shutil.rmtree(f"/etc/netns/{stale}", ignore_errors=True)


def test_ssrf_lab_refuses_without_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(AssertionError, match="needs root"):
        with ssrf_lab():
            pass


def test_ssrf_lab_bridges_loopback_ports_both_ways():
    with ssrf_lab() as lab, site() as s:
        # The test reaches a server inside the namespace (as it will the daemon's API) ...
        port = lab.forward_in(lab.port)
        status, _, body = webtools.http_get(f"http://127.0.0.1:{port}/from-host")
        assert status == 200
        assert b"Served on 127.0.0.1, path /from-host." in body and lab.marker.encode() in body
        # ... and a process inside reaches a host-loopback service at the same URL as outside.
        assert lab.expose(s.port) == s.port
        r = lab.fetch(s.page("parking").url)
        assert r.get("status") == 200 and "<title>Parking garage access</title>" in r["body"], r
        assert s.requests[-1] == "/pages/parking.html"
        big = lab.fetch(lab.url("127.0.0.1", "/bytes?n=300000"))
        assert len(big["body"]) == 300000
        status, _, body = webtools.http_get(f"http://127.0.0.1:{port}/bytes?n=300000")
        assert status == 200 and len(body) == 300000


class RawMcp:
    """The streamable HTTP transport spoken by hand, as the daemon's client will speak it."""

    def __init__(self, url):
        self.url = url
        self.headers = {"Accept": "application/json, text/event-stream"}
        r = self.post({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                       "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                                  "clientInfo": {"name": "raw", "version": "1"}}})
        assert r.status_code == 200, r.text
        self.headers["Mcp-Session-Id"] = r.headers["mcp-session-id"]
        self.headers["MCP-Protocol-Version"] = "2025-06-18"
        assert self.post({"jsonrpc": "2.0", "method": "notifications/initialized"}).status_code \
            == 202

    def post(self, msg, timeout=10.0):
        return httpx.post(self.url, json=msg, headers=self.headers, timeout=timeout)

    def call(self, id, name, arguments, timeout=10.0):
        return self.post({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                          "params": {"name": name, "arguments": arguments}}, timeout)


def wait_for_event(m, before, event, n=1, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        calls = m.calls()[before:]
        if sum(c["event"] == event for c in calls) >= n:
            return calls
        time.sleep(0.05)
    raise AssertionError(f"no {event!r} in {m.calls()[before:]}")


def test_mcp_raw_http_cancel_notification_cancels_a_dropped_connection_does_not(mcp):
    import threading

    raw = RawMcp(mcp.url)
    r = raw.call(2, "add", {"a": 20, "b": 22})
    data = [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:")]
    assert data[0]["result"]["structuredContent"] == {"result": 42}

    # notifications/cancelled for a running call: the tool is cancelled.
    before = len(mcp.calls())
    t = threading.Thread(target=lambda: raw.call(3, "slow", {"seconds": 30}, timeout=40),
                         daemon=True)
    t.start()
    wait_for_event(mcp, before, "start")
    r = raw.post({"jsonrpc": "2.0", "method": "notifications/cancelled",
                  "params": {"requestId": 3, "reason": "test"}})
    assert r.status_code == 202
    calls = wait_for_event(mcp, before, "cancel")
    assert [c["event"] for c in calls] == ["start", "cancel"]
    assert calls[0]["request_id"] == "3"

    # Only dropping the HTTP request does not: the call runs to its end.
    before = len(mcp.calls())
    with pytest.raises(httpx.ReadTimeout):
        raw.call(4, "slow", {"seconds": 1.5}, timeout=0.5)
    calls = wait_for_event(mcp, before, "end", timeout=10)
    assert [c["event"] for c in calls] == ["start", "end"]
    t.join(timeout=10)
