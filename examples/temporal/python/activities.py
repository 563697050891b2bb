"""Temporal activities that charge customers through Keybrake (temporalio Python SDK).

issue_vault_key   one capped key per workflow run, labelled with the workflow id
charge_customer   one PaymentIntent through the proxy; a cap hit is a non-retryable failure
revoke_vault_key  revokes every key of the run; the workflow calls it however it ends

Workers need KEYBRAKE_URL and KEYBRAKE_API_KEY (a Keybrake management token) in their
environment (without KEYBRAKE_URL they fail: there is no default host), and the ``httpx``
and ``stripe`` packages. The real Stripe secret stays in Keybrake.

What Temporal stores: the vault key is the result of ``issue_vault_key`` and an argument of
every ``charge_customer``, so it is in the workflow's event history in plain text (the Web
UI, ``temporal workflow show``) for the namespace's retention period. It is capped,
allowlisted, expires in 8 h and is revoked when the workflow ends; to keep it out of the
history altogether, configure a payload codec that encrypts (Temporal's Data Converter).
"""

import asyncio
import os

import httpx
import stripe

try:
    from temporalio import activity
    from temporalio.exceptions import ApplicationError
except ImportError:
    # No Temporal SDK here (tests): the activities stay plain async functions.
    # activity.info() is then whatever the caller installs (tests set a stand-in).
    class _Activity:
        info = None

        @staticmethod
        def defn(fn=None, **_options):
            return fn if fn else (lambda f: f)

    activity = _Activity()

    class ApplicationError(Exception):
        def __init__(self, message, *details, type=None, non_retryable=False):
            super().__init__(message)
            self.message, self.details, self.type, self.non_retryable = message, details, type, non_retryable


CAP_HIT = "KeybrakeCapHit"  # ApplicationError type the workflow recognises

# stripe-python 8+ exports the class at top level; older releases only under stripe.error.
StripeRateLimitError = getattr(stripe, "RateLimitError", None) or stripe.error.RateLimitError


def keybrake_url() -> str:
    # No default on purpose: a forgotten KEYBRAKE_URL must not send the management token
    # (and the vault key) to some public host.
    url = os.environ.get("KEYBRAKE_URL", "").rstrip("/")
    if not url:
        raise RuntimeError("KEYBRAKE_URL is not set: point it at your own Keybrake, e.g. http://keybrake:8080")
    return url


def run_label(workflow_id: str) -> str:
    """Every call of this run is audited under this label, and revoked by it."""
    return f"temporal-billing/{workflow_id}"


def is_cap_hit(err: Exception) -> bool:
    # Keybrake marks its own 429 with this header; Stripe's real rate limits lack it
    # (and those are worth a retry, a spent budget is not).
    headers = getattr(err, "headers", None) or {}
    return any(k.lower() == "x-keybrake-cap-hit" and v == "true" for k, v in headers.items())


def _management_headers() -> dict:
    return {"Authorization": f"Bearer {os.environ['KEYBRAKE_API_KEY']}"}


@activity.defn
async def issue_vault_key(workflow_id: str, budget_usd: float) -> str:
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.post(
            f"{keybrake_url()}/vault/keys",
            headers=_management_headers(),
            json={
                "vendor": "stripe",
                # The run's whole budget: without total_usd_cap a run that crosses UTC
                # midnight would get a fresh daily cap, i.e. its budget twice.
                "daily_usd_cap": budget_usd,
                "total_usd_cap": budget_usd,
                "allowed_endpoints": ["POST /v1/payment_intents", "GET /v1/customers/*"],
                "expires_in": "8h",
                "agent_run_label": run_label(workflow_id),
            },
        )
        r.raise_for_status()
        return r.json()["vault_key"]


@activity.defn
async def charge_customer(customer_id: str, amount_cents: int, vault_key: str) -> dict:
    stripe.api_base = f"{keybrake_url()}/stripe"
    # Same key on every Temporal retry, so a retried charge is charged once.
    idempotency_key = f"{activity.info().workflow_id}-{customer_id}-{amount_cents}"
    try:
        # stripe-python blocks, so it runs off the worker's event loop. The vault key goes
        # per call, not in stripe.api_key: one worker runs activities of many workflows at once.
        intent = await asyncio.to_thread(
            stripe.PaymentIntent.create,
            api_key=vault_key,  # scoped key, not the real secret
            amount=amount_cents,
            currency="usd",
            customer=customer_id,
            idempotency_key=idempotency_key,
        )
    except StripeRateLimitError as err:
        if is_cap_hit(err):
            # Retrying a spent budget cannot succeed: non_retryable skips the retry policy.
            raise ApplicationError(f"Keybrake spend cap reached; {customer_id} not charged", type=CAP_HIT, non_retryable=True)
        raise  # Stripe's own rate limit: Temporal retries it
    return {"customer_id": customer_id, "payment_intent": intent["id"]}


@activity.defn
async def revoke_vault_key(workflow_id: str) -> int:
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.post(
            f"{keybrake_url()}/vault/keys/revoke",
            headers=_management_headers(),
            json={"agent_run_label": run_label(workflow_id)},
        )
        r.raise_for_status()
        return r.json()["revoked"]
