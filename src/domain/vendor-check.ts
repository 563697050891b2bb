import { ADAPTERS } from "../vendors/index.ts";
import type { VendorName, VendorSecret } from "../vendors/types.ts";

/**
 * "Test connection": one cheap read-only call with the real secret, to tell an
 * operator whether the stored credentials work before a run depends on them.
 * Nothing is priced or logged; the answer's body is not kept (it is account data).
 */
const PROBE_PATH: Record<VendorName, (secret: VendorSecret) => string> = {
  stripe: () => "/v1/balance",
  twilio: (secret) => `/2010-04-01/Accounts/${secret.account_sid}.json`,
  resend: () => "/domains",
};

export type ConnectionCheck =
  | { ok: true; vendor: VendorName; status: number; latencyMs: number }
  | { ok: false; vendor: VendorName; reason: "not_configured" | "rejected" | "unexpected" | "unreachable"; status: number | null; message: string };

export interface VendorCheckDeps {
  secrets: { get(vendor: VendorName): Promise<VendorSecret | null> };
  baseUrls: Readonly<Record<VendorName, string>>;
  fetch?: typeof fetch;
  timeoutMs?: number;
}

export async function checkVendorConnection(vendor: VendorName, deps: VendorCheckDeps): Promise<ConnectionCheck> {
  const secret = await deps.secrets.get(vendor);
  if (!secret) return { ok: false, vendor, reason: "not_configured", status: null, message: "No secret is stored for this vendor." };
  const headers = new Headers({ accept: "application/json" });
  const path = ADAPTERS[vendor].authorize(PROBE_PATH[vendor](secret), headers, secret);
  const started = performance.now();
  let res: Response;
  try {
    res = await (deps.fetch ?? fetch)(deps.baseUrls[vendor] + path, {
      method: "GET",
      headers,
      redirect: "manual",
      signal: AbortSignal.timeout(deps.timeoutMs ?? 10_000),
    });
  } catch (e) {
    const message = (e as Error).name === "TimeoutError" ? "The vendor did not answer in time." : "Could not reach the vendor.";
    return { ok: false, vendor, reason: "unreachable", status: null, message };
  }
  await res.body?.cancel();
  const latencyMs = Math.round(performance.now() - started);
  if (res.ok) return { ok: true, vendor, status: res.status, latencyMs };
  if (res.status === 401 || res.status === 403) {
    return { ok: false, vendor, reason: "rejected", status: res.status, message: "The vendor refused these credentials." };
  }
  return { ok: false, vendor, reason: "unexpected", status: res.status, message: `The vendor answered HTTP ${res.status}.` };
}
