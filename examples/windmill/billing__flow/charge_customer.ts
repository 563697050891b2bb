// Step 2 of the billing flow, run once per customer by the for-each loop (Windmill, Bun runtime).
//
// A cap hit is returned as { status: "cap_hit" }, not thrown: the run's budget is spent, a
// retry cannot succeed, and the remaining iterations still get their answer. Anything else
// (network error, Stripe's own rate limit) throws, and the step's retry setting applies;
// the idempotency key makes those retries safe.
import Stripe from "stripe";

/** No default on purpose: a forgotten KEYBRAKE_URL must not send the management token to some public host. */
function keybrakeUrl(): string {
  const url = process.env.KEYBRAKE_URL?.replace(/\/+$/, "");
  if (!url) throw new Error("KEYBRAKE_URL is not set: point it at your own Keybrake, e.g. http://keybrake:8080");
  return url;
}

export async function main(
  customer_id: string, // the loop's flow_input.iter.value
  vault_key: string, // results.issue_vault_key.vault_key
  agent_run_label: string, // results.issue_vault_key.agent_run_label
  amount_cents: number = 2900,
) {
  // stripe-node takes no path prefix, only host and port: Keybrake routes the bare
  // /v1/... path by the vault key's vendor. The step's retry setting is the one retry layer.
  const url = new URL(keybrakeUrl());
  const stripe = new Stripe(vault_key, {
    host: url.hostname,
    port: Number(url.port || (url.protocol === "http:" ? 80 : 443)),
    protocol: url.protocol === "http:" ? "http" : "https",
    maxNetworkRetries: 0,
  });
  try {
    const intent = await stripe.paymentIntents.create(
      { amount: amount_cents, currency: "usd", customer: customer_id },
      { idempotencyKey: `${agent_run_label}-${customer_id}` }, // stable across retries of this run
    );
    return { customer_id, status: "charged", payment_intent_id: intent.id };
  } catch (err) {
    if (!isCapHit(err)) throw err;
    console.log(`Keybrake spend cap reached; ${customer_id} not charged`);
    return { customer_id, status: "cap_hit" };
  }
}

/** Keybrake marks its own 429 with this header; Stripe's real rate limits lack it (and are worth a retry). */
function isCapHit(err: unknown): boolean {
  const headers = (err as { headers?: any } | null)?.headers;
  const value = typeof headers?.get === "function" ? headers.get("x-keybrake-cap-hit") : headers?.["x-keybrake-cap-hit"];
  return value === "true";
}
