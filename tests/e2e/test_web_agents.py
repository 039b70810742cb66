"""Web search through a real SearXNG, MCP tools of a real MCP server, and the SSRF rules of
`fetch_url`, end to end (see test_agents.py for how the fixture model is made to call tools).

Traffic stays on this machine: SearXNG, its fixture site and the MCP server listen on
127.0.0.1; the SSRF cases run the daemon inside a network namespace the test creates
(webtools.ssrf_lab), whose private and link-local addresses are its own test hosts.
"""
import json
import time
import urllib.parse

import pytest

from test_agents import agent_model, api, chat, force, make_agent
from test_api import Server, err
from webtools import lookup_order_text, mcp_server, searxng, site, ssrf_lab

TOKENS = range(1543, 1552)


def model_with(tmp_path_factory, calls):
    """The tool-calling fixture with one added token per call in `calls` (name, arguments)."""
    assert len(calls) <= len(TOKENS)
    return agent_model(tmp_path_factory, dict(zip(TOKENS, calls))), list(TOKENS[:len(calls)])


# ------------------------------------------------------------------------------- web search

@pytest.fixture(scope="module")
def web(tmp_path_factory):
    with site() as s, searxng(s) as sx:
        model, tokens = model_with(tmp_path_factory, [
            ("web_search", {"query": "printer Heron"}),
            ("fetch_url", {"url": s.page("parking").url}),
        ])
        config = (f'[web_search]\nsearxng_url = "{sx}"\ntop_n = 3\nfetch = 1\n'
                  '[fetch]\nallow = ["127.0.0.0/8"]\n[agents]\nresult_chars = 400\n')
        srv = Server(tmp_path_factory.mktemp("web") / "state", model=model, config=config)
        srv.wait_ready()
        srv.admin = srv.key("admin", "admin")
        srv.site, srv.searx, srv.tokens = s, sx, tokens
        yield srv
        srv.stop()


def test_web_search_extension_grounds_the_answer_in_searxng_results(web):
    key = web.key("searcher", "chat,web")
    r = web.http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, json={
        "model": "tiny-qwen2-genai", "max_tokens": 4, "web_search": True,
        "messages": [{"role": "user", "content": "WireGuard VPN"}]})
    assert r.status_code == 200, r.text
    cites = r.json()["citations"]
    page = web.site.page("vpn-setup")
    assert [c["url"] for c in cites] == [page.url] and cites[0]["index"] == 1, cites
    assert cites[0]["title"] == page.title and cites[0]["text"]
    assert "WireGuard VPN" in web.site.searches()
    # fetch = 1: the best page was read through the fetcher.
    assert f"/pages/vpn-setup.html" in web.site.requests
    # Streamed: the citations come with the first chunk.
    events = chat(web, key, "tiny-qwen2-genai", stream=True, max_tokens=2,
                  web_search={"top_n": 1, "fetch": 0},
                  messages=[{"role": "user", "content": "parking garage"}])
    assert events[0]["citations"][0]["url"] == web.site.page("parking").url
    # SearXNG talked to nothing but the fixture site.
    assert web.searx.foreign_network_events({web.site.port}) == []


def test_web_search_needs_the_scope_and_a_configured_searxng(web, srv_plain):
    no_web = web.key("no-web", "chat")
    body = {"model": "tiny-qwen2-genai", "web_search": True,
            "messages": [{"role": "user", "content": "x"}]}
    r = web.http.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {no_web}"})
    assert err(r, 403)
    e = err(web.http.post("/v1/chat/completions", json={**body, "web_search": {"top_n": 50}},
                          headers={"Authorization": f"Bearer {web.key('w2', 'chat,web')}"}), 400)
    assert e["param"] == "web_search.top_n", e
    key = srv_plain.key("web-user", "chat,web")
    e = err(srv_plain.http.post("/v1/chat/completions", json=body,
                                headers={"Authorization": f"Bearer {key}"}), 400)
    assert e["param"] == "web_search" and "not configured" in e["message"], e


@pytest.fixture(scope="module")
def srv_plain(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("plain") / "state")
    s.wait_ready()
    yield s
    s.stop()


def test_agent_searches_the_web_and_reads_a_page(web):
    make_agent(web, name="scout", tools=["web_search", "fetch_url"], max_steps=1)
    key = web.key("scout-user", "agent:scout,web")
    v = chat(web, key, "agent:scout", **force(web.tokens[0])).json()
    (step,) = v["agent"]["steps"]
    printer = web.site.page("printer-floor3")
    assert step["tool"] == "web_search" and step["status"] == "ok", step
    assert [c["url"] for c in v["citations"]] == [printer.url]
    assert printer.url in step["summary"]
    v = chat(web, key, "agent:scout", **force(web.tokens[1])).json()
    (step,) = v["agent"]["steps"]
    parking = web.site.page("parking")
    assert step["tool"] == "fetch_url" and step["status"] == "ok", step
    assert v["citations"][0]["url"] == parking.url and v["citations"][0]["title"] == parking.title
    assert "7:00" in v["citations"][0]["text"]
    # Without the web scope the web tools are not offered.
    plain = web.key("scout-no-web", "agent:scout")
    v = chat(web, plain, "agent:scout", **force(web.tokens[0])).json()
    assert v["agent"]["tools"] == [] and v["agent"]["steps"] == []


def test_fetch_sites_limit_what_the_agent_reads(web):
    make_agent(web, name="narrow", tools=["fetch_url"], max_steps=1,
               fetch_sites=[web.site.url + "/pages/vpn"])
    key = web.key("narrow-user", "agent:narrow,web")
    before = list(web.site.requests)
    v = chat(web, key, "agent:narrow", **force(web.tokens[1])).json()
    (step,) = v["agent"]["steps"]
    assert step["status"] == "refused" and "outside the sites" in step["summary"], step
    assert "/pages/parking.html" not in web.site.requests[len(before):]


# ------------------------------------------------------------------------------------- MCP

@pytest.fixture(scope="module")
def mcp(tmp_path_factory):
    with mcp_server() as m:
        model, tokens = model_with(tmp_path_factory, [
            ("erp_lookup_order", {"order_id": "A-1001"}),
            ("erp_slow", {"seconds": 20}),
            ("erp_fail", {}),
        ])
        config = (f'[[mcp.servers]]\nname = "erp"\nurl = "{m.url}"\n'
                  '[agents]\ntool_timeout_s = 2\n')
        srv = Server(tmp_path_factory.mktemp("mcp") / "state", model=model, config=config)
        srv.wait_ready()
        srv.admin = srv.key("admin", "admin")
        srv.mcp, srv.tokens = m, tokens
        yield srv
        srv.stop()


def test_admin_sees_the_mcp_tools(mcp):
    v = api(mcp, "GET", "/v1/admin/tools").json()
    names = {t["name"] for t in v["data"]}
    assert {"kb_search", "current_time", "mcp:erp/lookup_order", "mcp:erp/slow"} <= names
    assert v["servers"] == [{"name": "erp", "url": mcp.mcp.url, "ok": True, "error": None}]
    web = next(t for t in v["data"] if t["name"] == "web_search")
    assert web["available"] is False and "not configured" in web["reason"]


def test_agent_calls_an_mcp_tool(mcp):
    make_agent(mcp, name="erp", tools=["mcp:erp/*"], max_steps=1)
    key = mcp.key("erp-user", "agent:erp")
    v = chat(mcp, key, "agent:erp", **force(mcp.tokens[0])).json()
    (step,) = v["agent"]["steps"]
    assert step["tool"] == "mcp:erp/lookup_order" and step["status"] == "ok", step
    assert step["summary"] == lookup_order_text("A-1001")
    assert "mcp:erp/add" in v["agent"]["tools"]
    ends = [c for c in mcp.mcp.calls() if c["tool"] == "lookup_order" and c["event"] == "end"]
    assert ends and ends[-1]["result"] == lookup_order_text("A-1001")
    v = chat(mcp, key, "agent:erp", **force(mcp.tokens[2])).json()
    (step,) = v["agent"]["steps"]
    assert step["status"] == "error" and "always raises" in step["summary"], step


def test_a_hanging_tool_times_out_and_is_cancelled_at_the_server(mcp):
    key = mcp.key("erp-slow", "agent:erp")
    started = time.time()
    v = chat(mcp, key, "agent:erp", **force(mcp.tokens[1])).json()
    took = time.time() - started
    (step,) = v["agent"]["steps"]
    assert step["status"] == "timeout" and step["tool"] == "mcp:erp/slow", step
    assert took < 15, took
    deadline = time.time() + 10
    while time.time() < deadline:
        if any(c["tool"] == "slow" and c["event"] == "cancel" for c in mcp.mcp.calls()):
            break
        time.sleep(0.1)
    assert any(c["tool"] == "slow" and c["event"] == "cancel" for c in mcp.mcp.calls())


def test_the_allowlist_limits_mcp_tools(mcp):
    make_agent(mcp, name="adder", tools=["mcp:erp/add"], max_steps=1)
    key = mcp.key("adder-user", "agent:adder")
    v = chat(mcp, key, "agent:adder", **force(mcp.tokens[0])).json()
    assert v["agent"]["tools"] == ["mcp:erp/add"] and v["agent"]["steps"] == [], v


# ------------------------------------------------------------------------------------ SSRF

@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with ssrf_lab() as lab:
        p = lab.port
        allowed = f"http://{lab.private2}:{p}/"
        cases = {
            "loopback": f"http://127.0.0.1:{p}/",
            "private": f"http://{lab.private}:{p}/",
            "linklocal": f"http://{lab.linklocal}:{p}/",
            "redirect": f"http://{lab.private2}:{p}/redirect?to="
                        + urllib.parse.quote(f"http://{lab.private}:{p}/secret", safe=""),
            "dns": f"http://intranet.test:{p}/",
            "allowed": allowed,
        }
        model, tokens = model_with(tmp_path_factory,
                                   [("fetch_url", {"url": u}) for u in cases.values()])
        state = tmp_path_factory.mktemp("ssrf") / "state"
        config = f'[fetch]\nallow = ["{lab.private2}/32"]\ntimeout_s = 5\n'
        srv = Server(state, model=model, config=config, prefix=lab.prefix,
                     url_map=lambda u: u.rsplit(":", 1)[0] + f":{lab.forward_in(int(u.rsplit(':', 1)[1]))}")
        srv.wait_ready()
        srv.admin = srv.key("admin", "admin")
        make_agent(srv, name="reader", tools=["fetch_url"], max_steps=1)
        srv.key_reader = srv.key("reader", "agent:reader,web")
        srv.lab, srv.cases = lab, dict(zip(cases, tokens))
        yield srv
        srv.stop()


@pytest.mark.parametrize("case", ["loopback", "private", "linklocal", "redirect", "dns"])
def test_fetch_url_refuses_internal_addresses(lab, case):
    before = len(lab.lab.requests())
    v = chat(lab, lab.key_reader, "agent:reader", **force(lab.cases[case])).json()
    (step,) = v["agent"]["steps"]
    assert step["status"] == "refused", step
    hits = lab.lab.requests()[before:]
    if case == "redirect":
        # The allowed host was asked and answered with a redirect; its target never was.
        assert [h["path"].split("?")[0] for h in hits] == ["/redirect"], hits
        assert lab.lab.private in step["summary"]
    else:
        assert hits == [], hits


def test_fetch_url_reads_an_allowlisted_address(lab):
    v = chat(lab, lab.key_reader, "agent:reader", **force(lab.cases["allowed"])).json()
    (step,) = v["agent"]["steps"]
    assert step["status"] == "ok", step
    assert lab.lab.marker in v["citations"][0]["text"], v["citations"]
    assert lab.lab.requests()[-1]["local"] == lab.lab.private2
