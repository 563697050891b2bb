// Last step of the billing flow, and its failure handler: revoke every key of this run
// (Windmill, Bun runtime). Any charge still in flight loses its key on its next call.

/** No default on purpose: a forgotten KEYBRAKE_URL must not send the management token to some public host. */
function keybrakeUrl(): string {
  const url = process.env.KEYBRAKE_URL?.replace(/\/+$/, "");
  if (!url) throw new Error("KEYBRAKE_URL is not set: point it at your own Keybrake, e.g. http://keybrake:8080");
  return url;
}

type Charge = { customer_id: string; status: string } | null;

export async function main(
  keybrake_api_key: string,
  charges: Charge[] = [], // results.charge_customers when the loop finished; empty in the failure handler
) {
  // Same label as issue_vault_key.ts: derived from the root flow job, so the failure
  // handler finds the key even when the step that issued it did not return.
  const agent_run_label = `windmill/${process.env.WM_ROOT_FLOW_JOB_ID ?? process.env.WM_FLOW_JOB_ID ?? "local"}`;
  const res = await fetch(`${keybrakeUrl()}/vault/keys/revoke`, {
    method: "POST",
    headers: {
      Authorization: `Bearer ${keybrake_api_key}`,
      "Content-Type": "application/json",
    },
    body: JSON.stringify({ agent_run_label }),
  });
  const body = await res.json();
  if (!res.ok) throw new Error(`Keybrake revoke failed: ${res.status} ${body?.error?.message ?? ""}`);
  const done = charges.filter((c): c is NonNullable<Charge> => c !== null);
  return {
    agent_run_label,
    revoked: body.revoked as number,
    charged: done.filter((c) => c.status === "charged").map((c) => c.customer_id),
    cap_hit: done.filter((c) => c.status === "cap_hit").map((c) => c.customer_id),
  };
}
