"""BillingWorkflow: one vault key per run, revoked however the run ends.

The workflow issues a capped key, charges each invoice with it, and revokes it in a
``finally`` so a completed, failed or cancelled run cannot keep spending. A cap hit is
reported in the result (those customers were not charged) instead of failing the run:
the budget did its job, and the rest of the invoices are still attempted, since a smaller
one may fit in what is left.
"""

from dataclasses import dataclass, field
from datetime import timedelta

try:
    from temporalio import workflow
    from temporalio.common import RetryPolicy
    from temporalio.exceptions import ActivityError, ApplicationError

    with workflow.unsafe.imports_passed_through():  # httpx and stripe stay out of the sandbox
        import activities
except ImportError:
    # No Temporal SDK here (tests): the decorators do nothing, and the caller installs
    # workflow.info / execute_activity / logger stand-ins to drive run() directly.
    from types import SimpleNamespace

    import activities

    workflow = SimpleNamespace(defn=lambda cls: cls, run=lambda fn: fn)
    ApplicationError = activities.ApplicationError

    class RetryPolicy:
        def __init__(self, **options):
            self.__dict__.update(options)

    class ActivityError(Exception):
        @property
        def cause(self):
            return self.__cause__


@dataclass
class Invoice:
    customer_id: str
    amount_cents: int


@dataclass
class BillingParams:
    budget_usd: float
    invoices: list[Invoice]


@dataclass
class BillingResult:
    charged: list[str] = field(default_factory=list)
    cap_hit: list[str] = field(default_factory=list)


@workflow.defn
class BillingWorkflow:
    @workflow.run
    async def run(self, params: BillingParams) -> BillingResult:
        workflow_id = workflow.info().workflow_id
        vault_key = await workflow.execute_activity(
            activities.issue_vault_key,
            args=[workflow_id, params.budget_usd],
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(maximum_attempts=2),
        )
        result = BillingResult()
        try:
            for invoice in params.invoices:
                try:
                    await workflow.execute_activity(
                        activities.charge_customer,
                        args=[invoice.customer_id, invoice.amount_cents, vault_key],
                        start_to_close_timeout=timedelta(seconds=30),
                        retry_policy=RetryPolicy(maximum_attempts=3),
                    )
                    result.charged.append(invoice.customer_id)
                except ActivityError as err:
                    if not (isinstance(err.cause, ApplicationError) and err.cause.type == activities.CAP_HIT):
                        raise
                    # Not charged, not retried: route these to a human (signal, review queue…).
                    workflow.logger.warning("Keybrake spend cap reached; %s not charged", invoice.customer_id)
                    result.cap_hit.append(invoice.customer_id)
        finally:
            # Runs on success, failure and cancellation alike. In-flight activities of this run
            # lose their key on their next vendor call, from any worker.
            await workflow.execute_activity(
                activities.revoke_vault_key,
                args=[workflow_id],
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=RetryPolicy(maximum_attempts=5),
            )
        return result
