"""Runs a worker for BillingWorkflow on the "billing" task queue.

    TEMPORAL_ADDRESS=localhost:7233 KEYBRAKE_URL=... KEYBRAKE_API_KEY=... python worker.py

Start a run with the Temporal CLI (the workflow id becomes the Keybrake run label):

    temporal workflow start --task-queue billing --type BillingWorkflow \\
      --workflow-id billing-2026-11-22 \\
      --input '{"budget_usd": 500, "invoices": [{"customer_id": "cus_001", "amount_cents": 2900}]}'
"""

import asyncio
import os

from temporalio.client import Client
from temporalio.worker import Worker

import activities
from workflows import BillingWorkflow


async def main() -> None:
    client = await Client.connect(os.environ.get("TEMPORAL_ADDRESS", "localhost:7233"))
    worker = Worker(
        client,
        task_queue="billing",
        workflows=[BillingWorkflow],
        activities=[activities.issue_vault_key, activities.charge_customer, activities.revoke_vault_key],
    )
    await worker.run()


if __name__ == "__main__":
    asyncio.run(main())
