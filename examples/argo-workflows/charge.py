"""Argo charge step: charge a comma-separated batch of customers through Keybrake.

    python charge.py cus_001,cus_002,cus_003

Environment: STRIPE_SECRET_KEY (the vault key), STRIPE_BASE_URL ({keybrake}/stripe),
WORKFLOW_NAME (makes idempotency keys stable across pod retries), AMOUNT_CENTS (2900).

Exit status: 0 when every customer was charged; 3 when some hit the Keybrake spend cap
(those were not charged; the rest of the batch was still attempted); 1 on any other error.
The workflow's retryPolicy OnError retries neither, so a spent budget never causes a retry storm.
"""

import os
import sys

import stripe

CAP_HIT_EXIT = 3

# stripe-python 8+ exports the class at top level; older releases only under stripe.error.
StripeRateLimitError = getattr(stripe, "RateLimitError", None) or stripe.error.RateLimitError


def is_cap_hit(err: Exception) -> bool:
    # Keybrake marks its own 429 with this header; Stripe's real rate limits lack it.
    headers = getattr(err, "headers", None) or {}
    return any(k.lower() == "x-keybrake-cap-hit" and v == "true" for k, v in headers.items())


def main(customer_ids: list) -> int:
    stripe.api_key = os.environ["STRIPE_SECRET_KEY"]  # the vault key, not the real secret
    stripe.api_base = os.environ["STRIPE_BASE_URL"]
    run = os.environ["WORKFLOW_NAME"]
    amount = int(os.environ.get("AMOUNT_CENTS", "2900"))
    capped = []
    for customer_id in customer_ids:
        try:
            intent = stripe.PaymentIntent.create(
                amount=amount,
                currency="usd",
                customer=customer_id,
                idempotency_key=f"{run}-{customer_id}",
            )
            print(f"charged {customer_id}: {intent['id']}")
        except StripeRateLimitError as err:
            if not is_cap_hit(err):
                raise
            print(f"KEYBRAKE CAP HIT: {customer_id} not charged (workflow budget spent)", file=sys.stderr)
            capped.append(customer_id)
    return CAP_HIT_EXIT if capped else 0


if __name__ == "__main__":
    sys.exit(main([c for c in sys.argv[1].split(",") if c]))
