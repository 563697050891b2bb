/**
 * Temporal activities that charge customers through Keybrake (TypeScript SDK).
 *
 * issueVaultKey   one capped key per workflow run, labelled with the workflow id
 * chargeCustomer  one PaymentIntent through the proxy; a cap hit is a non-retryable failure
 * revokeVaultKey  revokes every key of the run; the workflow calls it however it ends
 *
 * Workers need KEYBRAKE_URL and KEYBRAKE_API_KEY (a Keybrake management token) in their
 * environment (without KEYBRAKE_URL they fail: there is no default host) and the `stripe`
 * package. The real Stripe secret stays in Keybrake.
 *
 * What Temporal stores: the vault key is issueVaultKey's result and an argument of every
 * chargeCustomer, so it is in the workflow's event history in plain text (Web UI,
 * `temporal workflow show`) for the namespace's retention period. It is capped, allowlisted,
 * expires in 8 h and is revoked when the workflow ends; to keep it out of the history
 * altogether, configure a payload codec that encrypts (Temporal's Data Converter).
 */
import { ApplicationFailure, Context } from "@temporalio/activity";
import Stripe from "stripe";

/** ApplicationFailure type the workflow recognises (workflows.ts repeats it: it cannot import this file). */
export const CAP_HIT = "KeybrakeCapHit";

export interface ChargeResult {
  customerId: string;
  paymentIntent: string;
}

/** No default on purpose: a forgotten KEYBRAKE_URL must not send the management token to some public host. */
function keybrakeUrl(): string {
  const url = process.env.KEYBRAKE_URL?.replace(/\/+$/, "");
  if (!url) throw new Error("KEYBRAKE_URL is not set: point it at your own Keybrake, e.g. http://keybrake:8080");
  return url;
}

/** Every call of this run is audited under this label, and revoked by it. */
export const runLabel = (workflowId: string) => `temporal-billing/${workflowId}`;

export async function issueVaultKey(workflowId: string, budgetUsd: number): Promise<string> {
  const key = await management("POST", "/vault/keys", {
    vendor: "stripe",
    // The run's whole budget: without total_usd_cap a run that crosses UTC midnight
    // would get a fresh daily cap, i.e. its budget twice.
    daily_usd_cap: budgetUsd,
    total_usd_cap: budgetUsd,
    allowed_endpoints: ["POST /v1/payment_intents", "GET /v1/customers/*"],
    expires_in: "8h",
    agent_run_label: runLabel(workflowId),
  });
  return key.vault_key;
}

export async function chargeCustomer(customerId: string, amountCents: number, vaultKey: string): Promise<ChargeResult> {
  // Set for every activity a workflow schedules (only standalone activities lack it).
  const workflowId = Context.current().info.workflowExecution!.workflowId;
  // stripe-node takes no path prefix, only host and port: Keybrake routes the bare
  // /v1/... path by the vault key's vendor. Temporal's retry policy is the one retry layer.
  const url = new URL(keybrakeUrl());
  const stripe = new Stripe(vaultKey, {
    host: url.hostname,
    port: Number(url.port || (url.protocol === "http:" ? 80 : 443)),
    protocol: url.protocol === "http:" ? "http" : "https",
    maxNetworkRetries: 0,
  });
  try {
    const intent = await stripe.paymentIntents.create(
      { amount: amountCents, currency: "usd", customer: customerId },
      // Same key on every Temporal retry, so a retried charge is charged once.
      { idempotencyKey: `${workflowId}-${customerId}-${amountCents}` },
    );
    return { customerId, paymentIntent: intent.id };
  } catch (err) {
    if (isCapHit(err)) {
      // Retrying a spent budget cannot succeed: nonRetryable skips the retry policy.
      throw ApplicationFailure.nonRetryable(`Keybrake spend cap reached; ${customerId} not charged`, CAP_HIT);
    }
    throw err; // Stripe's own rate limit, a network error…: Temporal retries it
  }
}

export async function revokeVaultKey(workflowId: string): Promise<number> {
  const body = await management("POST", "/vault/keys/revoke", { agent_run_label: runLabel(workflowId) });
  return body.revoked;
}

/** Keybrake marks its own 429 with this header; Stripe's real rate limits lack it (and are worth a retry). */
function isCapHit(err: unknown): boolean {
  const headers = (err as { headers?: any } | null)?.headers;
  const value = typeof headers?.get === "function" ? headers.get("x-keybrake-cap-hit") : headers?.["x-keybrake-cap-hit"];
  return value === "true";
}

async function management(method: string, path: string, body: unknown): Promise<any> {
  const res = await fetch(keybrakeUrl() + path, {
    method,
    headers: { Authorization: `Bearer ${process.env.KEYBRAKE_API_KEY}`, "Content-Type": "application/json" },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(10_000),
  });
  const json = await res.json().catch(() => null);
  if (!res.ok) throw new Error(`Keybrake ${method} ${path}: ${res.status} ${json?.error?.message ?? res.statusText}`);
  return json;
}
