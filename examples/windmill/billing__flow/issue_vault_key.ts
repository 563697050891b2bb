// Step 1 of the billing flow: issue this flow run's vault key (Windmill, Bun runtime).
//
// keybrake_api_key is a Keybrake management token: bind it to a secret variable
// ($var:f/billing/keybrake_api_key). It is used here and in the revoke step only; the
// charge steps get the capped vault key, and the real Stripe secret stays in Keybrake.

const KEYBRAKE_URL = process.env.KEYBRAKE_URL ?? "https://proxy.keybrake.com";

export async function main(keybrake_api_key: string, budget_usd: number = 500) {
  const res = await fetch(`${KEYBRAKE_URL}/vault/keys`, {
    method: "POST",
    headers: {
      Authorization: `Bearer ${keybrake_api_key}`,
      "Content-Type": "application/json",
    },
    body: JSON.stringify({
      vendor: "stripe",
      daily_usd_cap: budget_usd,
      allowed_endpoints: ["POST /v1/payment_intents"],
      expires_in: "2h",
      // One label per flow run: the audit log filters by it and the last step revokes by it.
      agent_run_label: `windmill/${process.env.WM_ROOT_FLOW_JOB_ID ?? process.env.WM_FLOW_JOB_ID ?? "local"}`,
    }),
  });
  const body = await res.json();
  if (!res.ok) throw new Error(`Keybrake refused the key: ${res.status} ${body?.error?.message ?? ""}`);
  return { vault_key: body.vault_key as string, agent_run_label: body.agent_run_label as string }; // bound to later steps
}
