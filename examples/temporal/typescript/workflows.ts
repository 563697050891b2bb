/**
 * billingWorkflow: one vault key per run, revoked however the run ends.
 *
 * Issues a capped key, charges each invoice with it, and revokes it in a `finally` so a
 * completed, failed or cancelled run cannot keep spending. A cap hit is reported in the
 * result (those customers were not charged) instead of failing the run, and the other
 * invoices are still attempted, since a smaller one may fit in what is left.
 */
import { ActivityFailure, ApplicationFailure, CancellationScope, log, proxyActivities, workflowInfo } from "@temporalio/workflow";
import type * as activities from "./activities";

const { issueVaultKey, revokeVaultKey } = proxyActivities<typeof activities>({
  startToCloseTimeout: "10s",
  retry: { maximumAttempts: 3 },
});
const { chargeCustomer } = proxyActivities<typeof activities>({
  startToCloseTimeout: "30s",
  retry: { maximumAttempts: 3 },
});

/** activities.CAP_HIT (workflow code may import activity types only, not their code). */
const CAP_HIT = "KeybrakeCapHit";

export interface Invoice {
  customerId: string;
  amountCents: number;
}

export interface BillingParams {
  budgetUsd: number;
  invoices: Invoice[];
}

export interface BillingResult {
  charged: string[];
  capHit: string[];
}

export async function billingWorkflow(params: BillingParams): Promise<BillingResult> {
  const { workflowId } = workflowInfo();
  const vaultKey = await issueVaultKey(workflowId, params.budgetUsd);
  const result: BillingResult = { charged: [], capHit: [] };
  try {
    for (const invoice of params.invoices) {
      try {
        await chargeCustomer(invoice.customerId, invoice.amountCents, vaultKey);
        result.charged.push(invoice.customerId);
      } catch (err) {
        const capHit = err instanceof ActivityFailure && err.cause instanceof ApplicationFailure && err.cause.type === CAP_HIT;
        if (!capHit) throw err;
        // Not charged, not retried: route these to a human (signal, review queue…).
        log.warn("Keybrake spend cap reached; customer not charged", { customerId: invoice.customerId });
        result.capHit.push(invoice.customerId);
      }
    }
  } finally {
    // Non-cancellable: when the run is cancelled the revoke must still go out. In-flight
    // activities of this run then lose their key on their next vendor call, from any worker.
    await CancellationScope.nonCancellable(() => revokeVaultKey(workflowId));
  }
  return result;
}
