"""An agent on a real tool-capable model: kb_search over a small collection and web_search
through a real SearXNG (over the fixture site), three questions that need the documents, the
web, and both, each answered with the right fact and cited. Greedy, so a run of one model gives
the same answers. Checked: the tools the question needs ran, the answer states the facts, and each
fact is in a source the response cites. The first turn must call a tool (`tool_choice: "required"`, which applies to
an agent's first turn): a 1.5B model otherwise answers questions about "the office" from its
own guesses.

Runs only when EDGESEEK_TOOLS_MODEL names a model directory, e.g.

    EDGESEEK_TOOLS_MODEL=$(scripts/fetch-demo-model --qwen1.5b | tail -1) \\
        ~/.cache/edgeseek/test-venv/bin/python -m pytest -q tests/e2e/test_agents_demo.py

The fixture models of the other e2e tests write no sensible calls, and the 1.5B model that
does is too large and slow for CI, so without the variable the module is reported as skipped
(one line saying why), never as a failure.
"""
import os
from pathlib import Path

import pytest

MODEL_DIR = os.environ.get("EDGESEEK_TOOLS_MODEL")
if not MODEL_DIR:
    pytest.skip("EDGESEEK_TOOLS_MODEL is not set (a tool-capable model directory, e.g. "
                "scripts/fetch-demo-model --qwen1.5b); this module needs a real model",
                allow_module_level=True)

from test_agents import api  # noqa: E402
from test_api import Server  # noqa: E402
from webtools import FIXTURE_PAGES, searxng, site  # noqa: E402

POLICY = ("# Office policies\n\n## Guest Wi-Fi\nThe guest wireless network is called "
          "Harbor-Guest. Its password changes every Monday and is posted at reception.\n\n"
          "## Travel\nEvery business trip is approved by the head of the department before "
          "booking.\n")
INSTRUCTIONS = ("You are the office assistant. For questions about the company's own rules "
                "call kb_search; for facts about the office building call web_search. Use "
                "every tool the question needs. When the tool results answer the question, "
                "answer the user in one or two sentences of plain text and cite the sources "
                "as [n]; do not call a tool again.")


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    model = Path(MODEL_DIR).resolve()
    assert model.is_dir(), f"EDGESEEK_TOOLS_MODEL={MODEL_DIR} is not a directory"
    with site(FIXTURE_PAGES, match="any") as s, searxng(s) as sx:
        config = f'[web_search]\nsearxng_url = "{sx}"\ntop_n = 2\n'
        srv = Server(tmp_path_factory.mktemp("agent-demo") / "state", model=model, config=config)
        try:
            srv.wait_ready(timeout=900)
            srv.admin = srv.key("admin", "admin")
            assert api(srv, "POST", "/v1/kb/collections", json={"name": "policies"}).status_code == 201
            r = api(srv, "POST", "/v1/kb/collections/policies/documents",
                    params={"filename": "policies.md"}, content=POLICY.encode(),
                    headers={"Content-Type": "text/markdown"})
            assert r.status_code == 201, r.text
            r = api(srv, "POST", "/v1/admin/agents", json={
                "name": "office", "instructions": INSTRUCTIONS, "max_steps": 3,
                "tools": ["kb_search", "web_search"], "collections": ["policies"]})
            assert r.status_code == 201, r.text
            srv.client_ = srv.client(srv.key("staff", "agent:office,kb:read:policies,web"))
            srv.http.timeout = 900
            yield srv
        finally:
            srv.stop()


def ask(srv, question):
    r = srv.client_.with_options(timeout=900).chat.completions.create(
        model="agent:office", messages=[{"role": "user", "content": question}],
        temperature=0, max_tokens=300, tool_choice="required")
    extra = r.model_extra
    return r.choices[0].message.content or "", extra["agent"]["steps"], extra["citations"]


@pytest.mark.parametrize("question,facts,tools", [
    ("What is the name of the guest Wi-Fi network?", ["Harbor-Guest"], {"kb_search"}),
    ("When does the office parking garage open in the morning?", ["7:00"], {"web_search"}),
    ("Who approves a business trip, and on which floor is the printer Heron?",
     ["head of the department", "third"], {"kb_search", "web_search"}),
])
def test_the_agent_answers_from_the_sources_it_needs(srv, question, facts, tools):
    answer, steps, citations = ask(srv, question)
    used = {s["tool"] for s in steps if s["status"] == "ok"}
    assert tools <= used, (answer, steps)
    for f in facts:
        assert f.lower() in answer.lower(), (answer, steps)
    # Cited: every fact of the answer is in a source of the response's citations, and the
    # citations hold sources of each kind the question needs. (Qwen2.5-Coder-1.5B rarely
    # writes the [n] markers into the text itself, so they are not required here.)
    for f in facts:
        assert any(f.lower() in c["text"].lower() for c in citations), (f, citations)
    kinds = {"web_search" if "url" in c else "kb_search" for c in citations}
    assert tools <= kinds, citations
