"""Airflow billing DAG that charges customers through Keybrake.

One vault key per DAG run, capped in dollars and shared by every mapped task:

    issue_vault_key ─┐
    get_customer_ids ┴─> charge_customer (one mapped task per customer) ─> revoke_vault_key

* Workers only ever see the vault key; the real Stripe secret lives in Keybrake.
* A fan-out that outgrows the budget is stopped by the proxy: the tasks past the cap are
  skipped (not failed, not retried) with the reason in their log.
* Retries reuse the same Stripe idempotency key, so a retried charge is never charged twice.
* ``revoke_vault_key`` is the run's teardown: it runs once the charges are done, whether
  they succeeded, were skipped or failed, so a run cannot keep spending after it ends.

Put this file in your dags/ folder. Set KEYBRAKE_URL and KEYBRAKE_API_KEY (a Keybrake
management token) in the workers' environment; Python needs ``httpx`` and ``stripe``.
Without KEYBRAKE_URL the tasks fail: there is no default host.

What Airflow stores: the vault key is ``issue_vault_key``'s return value, so it sits in
XCom (the metadata database, in plain text) and shows in the UI's XCom tab and in the
mapped tasks' rendered arguments, for as long as the run's XComs are kept. The key is
capped, allowlisted to one endpoint, expires in 6 h and is revoked by the teardown, so
what leaks is bounded by the run's budget; to keep it out of the UI as well, use a
custom XCom backend that encrypts, or register it with Airflow's secrets masker.
"""

import os
from datetime import datetime, timedelta, timezone

import httpx
import stripe

try:
    from airflow.sdk import dag, task  # Airflow 3
except ImportError:
    try:
        from airflow.decorators import dag, task  # Airflow 2.x
    except ImportError:
        # No Airflow here (tests, a notebook): the task functions stay plain functions,
        # and defining the DAG below does nothing.
        def task(fn=None, **_options):
            return fn if fn else (lambda f: f)

        def dag(**_options):
            return lambda fn: (lambda *a, **k: None)

try:
    from airflow.exceptions import AirflowSkipException
except ImportError:

    class AirflowSkipException(Exception):
        pass


AMOUNT_CENTS = 2900

# stripe-python 8+ exports the class at top level; older releases only under stripe.error.
StripeRateLimitError = getattr(stripe, "RateLimitError", None) or stripe.error.RateLimitError


def keybrake_url() -> str:
    # No default on purpose: a forgotten KEYBRAKE_URL must not send the management token
    # (and the vault key) to some public host.
    url = os.environ.get("KEYBRAKE_URL", "").rstrip("/")
    if not url:
        raise RuntimeError("KEYBRAKE_URL is not set: point it at your own Keybrake, e.g. http://keybrake:8080")
    return url


def run_label(run_id: str) -> str:
    """Every call of this run is audited under this label, and revoked by it."""
    return f"airflow-billing/{run_id}"


def is_cap_hit(err: Exception) -> bool:
    # Keybrake marks its own 429 with this header; Stripe's real rate limits lack it
    # (and those are worth a retry, a spent budget is not).
    headers = getattr(err, "headers", None) or {}
    return any(k.lower() == "x-keybrake-cap-hit" and v == "true" for k, v in headers.items())


@task
def issue_vault_key(**context) -> str:
    r = httpx.post(
        f"{keybrake_url()}/vault/keys",
        headers={"Authorization": f"Bearer {os.environ['KEYBRAKE_API_KEY']}"},
        json={
            "vendor": "stripe",
            # The run's budget, whole: a run that crosses UTC midnight gets a fresh
            # daily cap, and total_usd_cap keeps it from getting its budget twice.
            "daily_usd_cap": float(context["params"]["budget_usd"]),
            "total_usd_cap": float(context["params"]["budget_usd"]),
            "allowed_endpoints": ["POST /v1/payment_intents"],
            "expires_in": "6h",
            "agent_run_label": run_label(context["run_id"]),
        },
        timeout=30,
    )
    r.raise_for_status()  # a refused key must stop the run before any charge
    return r.json()["vault_key"]


@task
def get_customer_ids(**context) -> list:
    # Replace with your own query (the seed's fetch_due_customers()).
    return list(context["params"]["customer_ids"])


@task(retries=3, retry_delay=timedelta(seconds=30))
def charge_customer(customer_id: str, vault_key: str, **context) -> dict:
    stripe.api_key = vault_key  # scoped key, not the real secret
    stripe.api_base = f"{keybrake_url()}/stripe"
    try:
        intent = stripe.PaymentIntent.create(
            amount=AMOUNT_CENTS,
            currency="usd",
            customer=customer_id,
            idempotency_key=f"{context['run_id']}-{customer_id}",  # stable across retries
        )
    except StripeRateLimitError as err:
        if is_cap_hit(err):
            # The run's budget is spent: retrying cannot succeed. Skip, visibly, and move on.
            raise AirflowSkipException(f"Keybrake spend cap reached; {customer_id} not charged")
        raise  # Stripe's own rate limit: let Airflow retry it
    return {"customer_id": customer_id, "payment_intent": intent["id"]}


@task
def revoke_vault_key(**context) -> int:
    r = httpx.post(
        f"{keybrake_url()}/vault/keys/revoke",
        headers={"Authorization": f"Bearer {os.environ['KEYBRAKE_API_KEY']}"},
        json={"agent_run_label": run_label(context["run_id"])},
        timeout=30,
    )
    r.raise_for_status()
    return r.json()["revoked"]


@dag(
    schedule="@daily",
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    params={"budget_usd": 500.0, "customer_ids": ["cus_001", "cus_002", "cus_003"]},
)
def billing_dag():
    vault_key = issue_vault_key()
    customer_ids = get_customer_ids()
    charges = charge_customer.partial(vault_key=vault_key).expand(customer_id=customer_ids)
    # A teardown runs when everything upstream is done, like trigger_rule="all_done", but
    # unlike a plain all_done task it does not decide the run's state: a failed charge
    # still fails the run instead of being hidden behind a successful revoke.
    charges >> revoke_vault_key().as_teardown(setups=vault_key)


billing_dag()
