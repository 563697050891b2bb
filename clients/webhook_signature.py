"""Verify a Keybrake webhook (Python 3.8+, standard library only).

Every delivery carries ``Keybrake-Signature: t=<unix seconds>,v1=<hex>`` where the hex is
HMAC-SHA256 of ``"<t>.<raw body>"`` under the webhook's signing secret (shown once by
POST /webhooks). Verify against the raw body bytes as received, and refuse old timestamps
so a captured delivery cannot be replayed later. The event ``id`` stays the same across
retries: use it to ignore a delivery you already handled.

    from webhook_signature import verify_keybrake_signature
    body = request.get_data()                       # Flask; Django: request.body
    if not verify_keybrake_signature(SECRET, body, request.headers.get("Keybrake-Signature")):
        abort(400)
    event = json.loads(body)                        # {"id", "type", "created_at", "data"}

Run as a script to check one delivery: ``python3 webhook_signature.py SECRET HEADER < body``
(exit status 0 if valid).
"""
import hashlib
import hmac
import re
import sys
import time

__all__ = ["verify_keybrake_signature"]


def verify_keybrake_signature(secret, raw_body, header, tolerance_seconds=300, now=None):
    """True if ``header`` is a valid Keybrake-Signature of ``raw_body`` (bytes or str) under ``secret``."""
    if not header:
        return False
    t = None
    signatures = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            t = int(value)
        elif key == "v1" and re.fullmatch(r"[0-9a-f]{64}", value):
            signatures.append(value)
    if t is None or not signatures:
        return False
    current = int(time.time() if now is None else now)
    if abs(current - t) > tolerance_seconds:
        return False
    body = raw_body.encode("utf-8") if isinstance(raw_body, str) else bytes(raw_body)
    expected = hmac.new(secret.encode("utf-8"), str(t).encode("ascii") + b"." + body, hashlib.sha256).hexdigest()
    # Several v1 values may be present (e.g. during a secret rotation): any one that matches will do.
    return any(hmac.compare_digest(expected, s) for s in signatures)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: webhook_signature.py SECRET HEADER < body")
    sys.exit(0 if verify_keybrake_signature(sys.argv[1], sys.stdin.buffer.read(), sys.argv[2]) else 1)
