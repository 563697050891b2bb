"""Keybrake client helper for Python: one file, standard library only.

Copy it next to your DAG, activity or script. It covers what a workflow run needs from the
management API and tells a Keybrake cap hit apart from everything else:

    import keybrake, stripe

    key = keybrake.issue(vendor="stripe", daily_usd_cap=500.0,
                         total_usd_cap=500.0,  # the run's budget, also across UTC midnight
                         allowed_endpoints=["POST /v1/payment_intents"],
                         expires_in="6h", agent_run_label=f"billing/{run_id}")
    stripe.api_key = key["vault_key"]
    stripe.api_base = keybrake.proxy_url("stripe")
    try:
        stripe.PaymentIntent.create(...)
    except stripe.error.RateLimitError as e:
        if not keybrake.is_cap_hit(e):
            raise          # Stripe's own rate limit: worth retrying
        ...                # the run's budget is spent: record it, do not retry
    finally:
        keybrake.revoke_run(f"billing/{run_id}")

URL and management token come from KEYBRAKE_URL and KEYBRAKE_API_KEY unless passed;
there is no default URL, so a forgotten KEYBRAKE_URL fails instead of sending the token away.
"""

import json
import os
import urllib.error
import urllib.parse
import urllib.request

__all__ = ["KeybrakeError", "issue", "get_key", "revoke", "revoke_run", "proxy_url", "is_cap_hit"]

CAP_HIT_HEADER = "x-keybrake-cap-hit"


class KeybrakeError(Exception):
    """A management API refusal: ``{"error": {"code", "message", "details"}}`` plus the status."""

    def __init__(self, status, code, message, details=None):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details


def issue(vendor, daily_usd_cap, allowed_endpoints, expires_in, agent_run_label, *, url=None, api_key=None, **optional):
    """POST /vault/keys. Returns the API's answer; ``["vault_key"]`` is shown only here.

    ``optional`` takes total_usd_cap, metadata, dedupe_window, require_idempotency_key, allow_unpriced.
    """
    body = {
        "vendor": vendor,
        "daily_usd_cap": daily_usd_cap,
        "allowed_endpoints": list(allowed_endpoints),
        "expires_in": expires_in,
        "agent_run_label": agent_run_label,
        **optional,
    }
    return _call("POST", "/vault/keys", body, url=url, api_key=api_key)


def get_key(key_id, *, url=None, api_key=None):
    """The key (never its secret) with spent_today_usd, reserved_usd, remaining_today_usd."""
    return _call("GET", f"/vault/keys/{urllib.parse.quote(key_id, safe='')}", url=url, api_key=api_key)


def revoke(key_id, *, url=None, api_key=None):
    """Revoke one key now. Idempotent."""
    return _call("DELETE", f"/vault/keys/{urllib.parse.quote(key_id, safe='')}", url=url, api_key=api_key)


def revoke_run(agent_run_label, *, url=None, api_key=None):
    """Revoke every key issued under a run label: the cleanup step of a workflow run."""
    return _call("POST", "/vault/keys/revoke", {"agent_run_label": agent_run_label}, url=url, api_key=api_key)


def proxy_url(vendor, *, url=None):
    """Base URL to give an SDK, e.g. ``stripe.api_base = proxy_url("stripe")``."""
    return f"{_base(url)}/{vendor}"


def is_cap_hit(obj):
    """True when ``obj`` is Keybrake refusing a call because the key's spend cap is reached.

    A cap hit is final for the run: retrying cannot succeed, so record it and move on.
    A vendor's own 429 (a real rate limit) is not a cap hit and is usually worth retrying,
    which is why this looks for Keybrake's ``X-Keybrake-Cap-Hit: true`` header, not the status.

    Accepts a stripe ``StripeError`` (``RateLimitError``; any stripe-python version), an httpx
    or requests response, ``httpx.HTTPStatusError``, ``urllib.error.HTTPError`` or an
    ``http.client.HTTPResponse``.
    """
    headers = getattr(obj, "headers", None)
    if headers is None and getattr(obj, "response", None) is not None:
        headers = getattr(obj.response, "headers", None)  # httpx/requests HTTP errors
    return _header(headers, CAP_HIT_HEADER) == "true"


def _header(headers, name):
    """Case-insensitive lookup across dict, httpx.Headers, CaseInsensitiveDict and email.Message."""
    if not headers:
        return None
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def _base(url):
    base = url or os.environ.get("KEYBRAKE_URL")
    if not base:
        raise ValueError("Keybrake: pass url= or set KEYBRAKE_URL")
    return base.rstrip("/")


def _call(method, path, body=None, *, url=None, api_key=None, timeout=30):
    token = api_key or os.environ.get("KEYBRAKE_API_KEY")
    if not token:
        raise ValueError("Keybrake: pass api_key= or set KEYBRAKE_API_KEY (a management token)")
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(_base(url) + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            return json.loads(res.read() or b"null")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            err = json.loads(raw).get("error") or {}
        except (ValueError, AttributeError):
            err = {}
        raise KeybrakeError(e.code, err.get("code", f"http_{e.code}"), err.get("message", raw[:200].decode(errors="replace")), err.get("details")) from None
