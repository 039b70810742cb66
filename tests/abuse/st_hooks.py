"""schemathesis check (loaded through SCHEMATHESIS_HOOKS): every error answer carries an
OpenAI-style body, {"error": {"message", "type", "param", "code"}}."""

import schemathesis


@schemathesis.check
def openai_error_body(ctx, response, case):
    if response.status_code < 400:
        return None
    try:
        body = response.json()
    except Exception:  # noqa: BLE001 - any unreadable body fails the check
        raise AssertionError(f"error {response.status_code} without a JSON body: {response.text[:200]!r}")
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        raise AssertionError(f"error {response.status_code} body has no `error` object: {response.text[:200]!r}")
    missing = [k for k in ("message", "type", "param", "code") if k not in err]
    if missing or not isinstance(err.get("message"), str) or not err["message"]:
        raise AssertionError(f"error {response.status_code} body lacks {missing or ['a message']}: {response.text[:200]!r}")
    return None
