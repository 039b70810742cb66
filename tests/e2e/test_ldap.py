"""Console sign-in through the company directory, against a real OpenLDAP (`ldapdir.py`):
sign-in sets an HttpOnly, Secure, SameSite=Strict session cookie; directory groups map to
scopes and a usage group; writes need the CSRF token; wrong password and unknown user are the
same 401; a disabled account loses its session at the next re-check; attempts are limited
and audited (never the password); API keys keep working."""
import signal
import time

import httpx
import pytest

from ldapdir import PEOPLE, Slapd, make_pki
from test_api import MODEL, Server
from test_audit import by_request, records

COOKIE = "edgeseek_session"


def call(s, method, path, session=None, csrf=None, key=None, rid=None, **kw):
    """One request on a fresh connection with no cookie jar: what it sends is what it says."""
    headers = kw.pop("headers", {})
    if session:
        headers["Cookie"] = f"{COOKIE}={session}"
    if csrf:
        headers["X-CSRF-Token"] = csrf
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if rid:
        headers["X-Request-Id"] = rid
    return httpx.request(method, s.url + path, headers=headers, verify=s.tls_context(),
                         timeout=60, **kw)


def login(s, user, password, rid=None):
    return call(s, "POST", "/v1/auth/login", json={"username": user, "password": password},
                rid=rid)


def signed_in(s, user, password):
    r = login(s, user, password)
    assert r.status_code == 200, r.text
    cookie = r.headers["set-cookie"]
    value = cookie.split(";")[0].split("=", 1)[1]
    return value, r.json(), cookie


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    work = tmp_path_factory.mktemp("ldap")
    d = Slapd(work / "slapd")
    try:
        s = Server(work / "state", config=d.config(work / "bind.secret", recheck_seconds=2))
        try:
            s.wait_ready()
            yield s, d
        finally:
            s.stop()
    finally:
        d.stop()


def test_methods_say_directory_sign_in_is_on(env):
    s, _ = env
    r = call(s, "GET", "/v1/auth/methods")
    assert r.status_code == 200 and r.json() == {"api_key": True, "directory": True}


def test_sign_in_sets_a_safe_cookie_and_maps_groups_to_scopes(env):
    s, _ = env
    session, body, cookie = signed_in(s, "alice", "alice-pw")
    attrs = [a.strip() for a in cookie.split(";")]
    assert {"HttpOnly", "Secure", "SameSite=Strict", "Path=/"} <= set(attrs), cookie
    assert f"Max-Age={8 * 3600}" in attrs
    assert len(session) == 64
    assert body["user"] == "alice" and body["method"] == "session"
    assert body["scopes"] == ["chat", "kb:read:finance"] and body["group"] == "finance"
    assert body["expires_at"] > time.time() + 7 * 3600 and len(body["csrf_token"]) == 64
    # The cookie authenticates; the CSRF token is not the session id.
    assert body["csrf_token"] != session
    r = call(s, "GET", "/v1/auth/session", session=session)
    assert r.status_code == 200 and r.json()["csrf_token"] == body["csrf_token"]
    assert call(s, "GET", "/v1/models", session=session).status_code == 200
    # kb:read:finance yes (past the gate: the collection does not exist), hr and admin no.
    r = call(s, "GET", "/v1/kb/collections/finance", session=session)
    assert r.status_code not in (401, 403), r.text
    r = call(s, "GET", "/v1/kb/collections/hr", session=session)
    assert r.status_code == 403 and "kb:read:hr" in r.json()["error"]["message"]
    assert call(s, "GET", "/v1/admin/keys", session=session).status_code == 403
    # A made-up session is nobody.
    assert call(s, "GET", "/v1/models", session="0" * 64).status_code == 401


def test_writes_by_cookie_need_the_csrf_token(env):
    s, _ = env
    session, body, _ = signed_in(s, "alice", "alice-pw")
    chat = {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    for csrf in (None, "0" * 64):
        r = call(s, "POST", "/v1/chat/completions", session=session, csrf=csrf, json=chat)
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "csrf_token_invalid"
    r = call(s, "POST", "/v1/chat/completions", session=session, csrf=body["csrf_token"],
             json=chat)
    assert r.status_code == 200, r.text
    # Counted like a key's call: under the user, in the mapped usage group.
    admin = s.key("ops", "admin")
    deadline = time.time() + 5
    while True:
        u = call(s, "GET", "/v1/admin/usage", key=admin).json()
        row = next((k for k in u["keys"] if k["key_name"] == "alice"), None)
        if row and row["tokens_in"] > 0 or time.time() > deadline:
            break
        time.sleep(0.2)
    assert row and row["group"] == "finance" and row["tokens_in"] > 0, u


def test_admin_group_and_api_keys_side_by_side(env):
    s, _ = env
    session, body, _ = signed_in(s, "bob", "bob-pw")
    assert body["scopes"] == ["admin"] and body["group"] is None
    assert call(s, "GET", "/v1/admin/keys", session=session).status_code == 200
    # Programs keep using keys, with no cookie and no CSRF token.
    key = s.key("script", "chat")
    assert call(s, "GET", "/v1/models", key=key).status_code == 200
    r = call(s, "POST", "/v1/chat/completions", key=key,
             json={"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 200, r.text
    r = call(s, "GET", "/v1/auth/session", key=key)
    assert r.json()["method"] == "api_key" and "csrf_token" not in r.json()
    # A bearer header wins over a cookie: a wrong key is refused even with a good session.
    assert call(s, "GET", "/v1/models", session=session, key="es-wrong").status_code == 401


def test_wrong_password_and_unknown_user_are_the_same_401(env):
    s, _ = env
    a = login(s, "alice", "not-her-password")
    b = login(s, "nobody-here", "whatever")
    assert a.status_code == b.status_code == 401
    assert a.json() == b.json()
    assert a.json()["error"]["code"] == "invalid_credentials"
    # Filter syntax in the name is a literal value, not a wildcard.
    assert login(s, "*", "alice-pw").status_code == 401
    # An empty password would be an anonymous bind: refused before the directory.
    r = login(s, "alice", "")
    assert r.status_code == 400 and r.json()["error"]["param"] == "password"
    r = call(s, "POST", "/v1/auth/login", json={"username": "alice", "password": "x", "pin": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "pin"


def test_a_user_in_no_mapped_group_cannot_sign_in(env):
    s, _ = env
    r = login(s, "carol", "carol-pw")
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "no_mapped_group"
    assert "set-cookie" not in r.headers


def test_a_disabled_account_loses_its_session_within_the_recheck(env):
    s, d = env
    session, _, _ = signed_in(s, "erin", "erin-pw")
    assert call(s, "GET", "/v1/models", session=session).status_code == 200
    d.disable("erin")
    time.sleep(2.5)  # recheck_seconds = 2
    r = call(s, "GET", "/v1/models", session=session)
    assert r.status_code == 401 and r.json()["error"]["code"] == "session_expired", r.text
    # Gone for good, and the account cannot sign in again.
    assert call(s, "GET", "/v1/models", session=session).status_code == 401
    assert login(s, "erin", "erin-pw").status_code == 401


def test_logout_closes_the_session(env):
    s, _ = env
    session, body, _ = signed_in(s, "bob", "bob-pw")
    assert call(s, "POST", "/v1/auth/logout", session=session).status_code == 403
    r = call(s, "POST", "/v1/auth/logout", session=session, csrf=body["csrf_token"])
    assert r.status_code == 200 and r.json() == {"closed": True}
    assert "Max-Age=0" in r.headers["set-cookie"]
    assert call(s, "GET", "/v1/auth/session", session=session).status_code == 401


def test_sign_ins_are_audited_without_the_password(env):
    s, _ = env
    # (Each account has 5 attempts a minute: this module spreads them over several.)
    assert login(s, "bob", "bob-pw", rid="ldap-ok").status_code == 200
    assert login(s, "bob", "Sekr1t-Typo-4417", rid="ldap-bad").status_code == 401
    [ok] = by_request(s.state, "ldap-ok")
    assert ok["kind"] == "api" and ok["action"] == "auth.login" and ok["target"] == "bob"
    assert ok["key_id"] == "user:bob" and ok["key_name"] == "bob" and ok["status"] == 200
    [bad] = by_request(s.state, "ldap-bad")
    assert bad["kind"] == "auth_failure" and bad["target"] == "bob" and bad["status"] == 401
    assert bad.get("key_id") is None
    for f in (s.state / "audit").iterdir():
        if f.is_file():
            assert b"Sekr1t-Typo-4417" not in f.read_bytes()
            assert b"bob-pw" not in f.read_bytes()
    # Later calls of the session are recorded under the user.
    assert any(r.get("key_id") == "user:alice" and r.get("route") == "/v1/models"
               for r in records(s.state))


def test_attempts_are_limited_per_account(env):
    s, _ = env
    codes = [login(s, "dave", "wrong").status_code for _ in range(5)]
    assert codes == [401] * 5
    # The sixth is refused before the directory, even with the right password.
    r = login(s, "dave", "dave-pw")
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "too_many_sign_in_attempts"
    assert 1 <= int(r.headers["retry-after"]) <= 61
    # Another account from the same address is not locked out by dave's.
    assert login(s, "alice", "alice-pw").status_code == 200


def wait_for(check, timeout=20):
    deadline = time.time() + timeout
    while not check():
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


def test_sighup_turns_directory_sign_in_on_remaps_groups_and_off(env, tmp_path):
    _, d = env
    s = Server(tmp_path / "state", config="")
    try:
        methods = lambda: call(s, "GET", "/v1/auth/methods").json()["directory"]  # noqa: E731
        assert methods() is False
        assert login(s, "alice", "alice-pw").status_code == 404
        cfg = s.state / "edgeseek.toml"
        cfg.write_text(d.config(tmp_path / "bind.secret", recheck_seconds=1))
        s.proc.send_signal(signal.SIGHUP)
        wait_for(methods)
        session, body, _ = signed_in(s, "alice", "alice-pw")
        assert body["scopes"] == ["chat", "kb:read:finance"]
        # A new mapping reaches open sessions at their next re-check.
        cfg.write_text(cfg.read_text().replace('["chat", "kb:read:finance"]', '["chat"]'))
        s.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: call(s, "GET", "/v1/auth/session", session=session).json()["scopes"]
                 == ["chat"])
        # Directory sign-in turned off: its sessions end.
        cfg.write_text("")
        s.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: not methods())
        assert call(s, "GET", "/v1/models", session=session).status_code == 401
    finally:
        s.stop()


def test_plain_ldap_to_another_host_is_refused_at_start(tmp_path):
    secret = tmp_path / "bind.secret"
    secret.write_text("x\n")
    cfg = f"""
[auth.ldap]
url = "ldap://dc1.corp.example"
bind_dn = "cn=svc"
bind_password_file = "{secret}"
user_base = "{PEOPLE}"
[auth.ldap.groups."cn=g"]
scopes = ["chat"]
"""
    with pytest.raises(AssertionError) as e:
        Server(tmp_path / "state", config=cfg)
    assert "auth.ldap.url" in str(e.value) and "starttls" in str(e.value)


@pytest.fixture(scope="module")
def tls_directory(tmp_path_factory):
    work = tmp_path_factory.mktemp("ldap-tls")
    d = Slapd(work / "slapd", tls=True)
    yield work, d
    d.stop()


@pytest.mark.parametrize("how", ["ldaps", "starttls"])
def test_sign_in_over_tls_trusting_the_configured_ca(tls_directory, how):
    work, d = tls_directory
    extra = f'ca_file = "{d.ca}"\n' + ("starttls = true\n" if how == "starttls" else "")
    url = d.ldaps_url if how == "ldaps" else d.url
    s = Server(work / f"state-{how}", config=d.config(work / "bind.secret", extra=extra, url=url))
    try:
        session, body, _ = signed_in(s, "alice", "alice-pw")
        assert body["scopes"] == ["chat", "kb:read:finance"]
        assert call(s, "GET", "/v1/models", session=session).status_code == 200
    finally:
        s.stop()


def test_a_directory_certificate_from_another_ca_is_refused(tls_directory):
    work, d = tls_directory
    make_pki(work / "other", name="Someone Else")
    extra = f'ca_file = "{work / "other" / "ca.pem"}"\n'
    s = Server(work / "state-other-ca",
               config=d.config(work / "bind.secret", extra=extra, url=d.ldaps_url))
    try:
        r = login(s, "alice", "alice-pw")
        # Not the user's fault, and not a wrong password: the directory cannot be trusted.
        assert r.status_code == 503, r.text
        assert "directory" in r.json()["error"]["message"]
        assert "certificate" in s.logs().lower() or "tls" in s.logs().lower(), s.logs()
    finally:
        s.stop()
