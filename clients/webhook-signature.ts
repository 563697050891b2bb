/**
 * Verify a Keybrake webhook (TypeScript: Node 18+, Bun, Deno). One file, no dependencies.
 *
 * Every delivery carries `Keybrake-Signature: t=<unix seconds>,v1=<hex>` where the hex is
 * HMAC-SHA256 of `"<t>.<raw body>"` under the webhook's signing secret (shown once by
 * POST /webhooks). Verify against the raw body bytes as received — not a re-serialised
 * JSON object — and refuse old timestamps so a captured delivery cannot be replayed later.
 * The event `id` stays the same across retries: use it to ignore a delivery you already handled.
 *
 *   import { verifyKeybrakeSignature } from "./webhook-signature.ts";
 *   const body = await request.text();
 *   if (!verifyKeybrakeSignature(process.env.KEYBRAKE_WEBHOOK_SECRET!, body, request.headers.get("keybrake-signature"))) {
 *     return new Response("bad signature", { status: 400 });
 *   }
 *   const event = JSON.parse(body); // { id, type, created_at, data }
 */
import { createHmac, timingSafeEqual } from "node:crypto";

export interface VerifyOptions {
  /** How old (or how far in the future) `t` may be. Default 300 s. */
  toleranceSeconds?: number;
  /** The current time in ms (for tests). */
  now?: number;
}

export function verifyKeybrakeSignature(secret: string, rawBody: string | Uint8Array, header: string | null | undefined, opts: VerifyOptions = {}): boolean {
  if (!header) return false;
  let t: number | null = null;
  const signatures: string[] = [];
  for (const part of header.split(",")) {
    const eq = part.indexOf("=");
    const k = part.slice(0, eq).trim();
    const v = part.slice(eq + 1).trim();
    if (k === "t" && /^\d+$/.test(v)) t = Number(v);
    if (k === "v1" && /^[0-9a-f]{64}$/.test(v)) signatures.push(v);
  }
  if (t === null || signatures.length === 0) return false;
  const now = Math.floor((opts.now ?? Date.now()) / 1000);
  if (Math.abs(now - t) > (opts.toleranceSeconds ?? 300)) return false;
  const body = typeof rawBody === "string" ? Buffer.from(rawBody, "utf8") : Buffer.from(rawBody);
  const expected = createHmac("sha256", secret).update(`${t}.`).update(body).digest();
  // Several v1 values may be present (e.g. during a secret rotation): any one that matches will do.
  return signatures.some((hex) => timingSafeEqual(Buffer.from(hex, "hex"), expected));
}
