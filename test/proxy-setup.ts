import Stripe from "stripe";
import { startFakeVendor, type FakeVendor } from "./fake-vendor.ts";
import { dbRow, dbRows, startKeybrake, type Running } from "./helpers.ts";

/** Keybrake wired to a fresh fake vendor holding all three real secrets. */
export async function startProxyStack(env: Record<string, string> = {}): Promise<{ kb: Running; fake: FakeVendor; stop(): Promise<void> }> {
  const fake = await startFakeVendor();
  const kb = await startKeybrake({ ...vendorEnv(fake), ...env });
  return {
    kb,
    fake,
    async stop() {
      await kb.stop();
      await fake.stop();
    },
  };
}

export function vendorEnv(fake: FakeVendor): Record<string, string> {
  return {
    KEYBRAKE_STRIPE_BASE_URL: fake.url,
    KEYBRAKE_TWILIO_BASE_URL: fake.url,
    KEYBRAKE_RESEND_BASE_URL: fake.url,
    KEYBRAKE_STRIPE_SECRET_KEY: fake.credentials.stripe,
    KEYBRAKE_TWILIO_ACCOUNT_SID: fake.credentials.twilioSid,
    KEYBRAKE_TWILIO_AUTH_TOKEN: fake.credentials.twilioToken,
    KEYBRAKE_RESEND_API_KEY: fake.credentials.resend,
  };
}

/** stripe-node as the seeds configure it: only host and port change (it always sends /v1/…). */
export function stripeThrough(baseUrl: string, vaultKey: string, opts: Partial<Stripe.StripeConfig> = {}): Stripe {
  const u = new URL(baseUrl);
  return new Stripe(vaultKey, { host: u.hostname, port: Number(u.port), protocol: "http", ...opts });
}

/** A raw proxied call, as curl or an SDK without a base-path option would send it. */
export async function proxied(url: string, vaultKey: string, method: string, path: string, form?: Record<string, string>, headers: Record<string, string> = {}) {
  const res = await fetch(url + path, {
    method,
    headers: {
      authorization: `Bearer ${vaultKey}`,
      ...(form ? { "content-type": "application/x-www-form-urlencoded" } : {}),
      ...headers,
    },
    body: form ? new URLSearchParams(form).toString() : undefined,
  });
  const text = await res.text();
  let json: any = text;
  try {
    json = JSON.parse(text);
  } catch {}
  return { status: res.status, headers: res.headers, json };
}

/** The key's ledger once every call answered so far has settled (settlements commit after their answers). */
export async function ledgerOf(kb: Running, keyId: string) {
  await kb.services.forwarder.settled();
  const s = kb.services;
  const key = (await dbRow<{ spent_total_micros: number; reserved_total_micros: number }>(s, "SELECT spent_total_micros, reserved_total_micros FROM vault_keys WHERE id = ?", keyId))!;
  const days = (await dbRow<{ spent: number | null; reserved: number | null }>(s, "SELECT sum(spent_micros) AS spent, sum(reserved_micros) AS reserved FROM key_spend_days WHERE key_id = ?", keyId))!;
  const audit = await dbRows<{ outcome: string; n: number }>(s, "SELECT outcome, count(*) AS n FROM audit_log WHERE key_id = ? GROUP BY outcome", keyId);
  return {
    spent: key.spent_total_micros,
    reserved: key.reserved_total_micros,
    daySpent: days.spent ?? 0,
    dayReserved: days.reserved ?? 0,
    outcomes: Object.fromEntries(audit.map((a) => [a.outcome, a.n])) as Record<string, number>,
  };
}
