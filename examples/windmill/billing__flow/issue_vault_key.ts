// Step 1 of the billing flow: issue this flow run's vault key (Windmill, Bun runtime).
//
// keybrake_api_key is a Keybrake management token: bind it to a secret variable
// ($var:f/billing/keybrake_api_key). It is used here and in the revoke step only; the
// charge steps get the capped vault key, and the real Stripe secret stays in Keybrake.
//
// What Windmill stores: this step's result (the vault key) is kept in plain text with the
// job's result, shown in the run's page, and passed as an input to every for-each job. The
// key is capped, allowlisted, expires in 2 h and is revoked by the last step; keep the
// flow's runs visible only to the folder's owners, and never log the key in charge steps.

/** No default on purpose: a forgotten KEYBRAKE_URL must not send the management token to some public host. */
function keybrakeUrl(): string {
  const url = process.env.KEYBRAKE_URL?.replace(/\/+$/, "");
  if (!url) throw new Error("KEYBRAKE_URL is not set: point it at your own Keybrake, e.g. http://keybrake:8080");
  return url;
}

export async function main(keybrake_api_key: string, budget_usd: number = 500) {
  const res = await fetch(`${keybrakeUrl()}/vault/keys`, {
    method: "POST",
    headers: {
      Authorization: `Bearer ${keybrake_api_key}`,
      "Content-Type": "application/json",
    },
    body: JSON.stringify({
      vendor: "stripe",
      // The run's whole budget: without total_usd_cap a run that crosses UTC midnight
      // would get a fresh daily cap, i.e. its budget twice.
      daily_usd_cap: budget_usd,
      total_usd_cap: budget_usd,
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
