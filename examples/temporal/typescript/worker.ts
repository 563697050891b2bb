/**
 * Runs a worker for billingWorkflow on the "billing" task queue.
 *
 *   TEMPORAL_ADDRESS=localhost:7233 KEYBRAKE_URL=... KEYBRAKE_API_KEY=... npx ts-node worker.ts
 *
 * Start a run with the Temporal CLI (the workflow id becomes the Keybrake run label):
 *
 *   temporal workflow start --task-queue billing --type billingWorkflow \
 *     --workflow-id billing-2026-11-22 \
 *     --input '{"budgetUsd": 500, "invoices": [{"customerId": "cus_001", "amountCents": 2900}]}'
 */
import { NativeConnection, Worker } from "@temporalio/worker";
import * as activities from "./activities";

async function run(): Promise<void> {
  const connection = await NativeConnection.connect({ address: process.env.TEMPORAL_ADDRESS ?? "localhost:7233" });
  const worker = await Worker.create({
    connection,
    taskQueue: "billing",
    workflowsPath: require.resolve("./workflows"),
    activities,
  });
  await worker.run();
}

run().catch((err) => {
  console.error(err);
  process.exit(1);
});
