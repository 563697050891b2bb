import { fixedPrice, matches, READ_METHODS, rules } from "./rules.ts";
import { readWire } from "./wire.ts";
import type { Estimate, PricedRequest, PricingContext, VendorAdapter } from "./types.ts";

const SEND = rules("POST /emails");
const SEND_BATCH = rules("POST /emails/batch");
const BROADCAST_CREATE = rules("POST /broadcasts");
/** Sending a broadcast mails its whole audience, whose size is not in the request: priced only by the pricing file. */
const MONEY_LATER = rules("POST /broadcasts/*/send");
/** Managing domains, audiences, contacts, keys, scheduled emails and draft broadcasts sends nothing. Named routes only. */
const FREE_WRITES = rules(
  "PATCH /emails/*",
  "POST /emails/*/cancel",
  "POST /domains",
  "PATCH /domains/*",
  "DELETE /domains/*",
  "POST /domains/*/verify",
  "POST /audiences",
  "DELETE /audiences/*",
  "POST /audiences/*/contacts",
  "PATCH /audiences/*/contacts/*",
  "DELETE /audiences/*/contacts/*",
  "POST /contacts",
  "PATCH /contacts/*",
  "DELETE /contacts/*",
  "PATCH /broadcasts/*",
  "DELETE /broadcasts/*",
);

const RECIPIENT_FIELDS = new Set(["to", "cc", "bcc"]);

/**
 * Recipients of one email: to + cc + bcc, each a string or a list of strings. A string
 * holding commas is counted as that many addresses: whether the vendor splits it is
 * not documented, so Keybrake reserves as if it did.
 */
function recipients(email: unknown): number | null {
  if (!email || typeof email !== "object" || Array.isArray(email)) return null;
  const addresses = (v: string) => v.split(",").length;
  // "Bcc" or "TO" is not counted below: whether Resend folds the case of keys is not documented, so refuse it.
  if (Object.keys(email).some((k) => RECIPIENT_FIELDS.has(k.toLowerCase()) && !RECIPIENT_FIELDS.has(k))) return null;
  let n = 0;
  for (const field of ["to", "cc", "bcc"] as const) {
    const v = (email as Record<string, unknown>)[field];
    if (v === undefined || v === null) continue;
    if (typeof v === "string") n += addresses(v);
    else if (Array.isArray(v) && v.every((a) => typeof a === "string")) n += v.reduce((sum: number, a: string) => sum + addresses(a), 0);
    else return null;
  }
  return n;
}

function estimate(req: PricedRequest, ctx: PricingContext): Estimate {
  const fixed = fixedPrice(ctx.pricing, "resend", req.method, req.path);
  if (fixed !== null) return { kind: "priced", micros: fixed };
  if (READ_METHODS.has(req.method)) return { kind: "priced", micros: 0 };
  const perRecipient = ctx.pricing.resend.perRecipientMicros;
  if (matches(SEND, req.method, req.path)) {
    const n = recipients(req.json);
    if (n === null) return { kind: "invalid", param: "to", message: "Keybrake needs a JSON body with to/cc/bcc as strings or lists of strings to price this email." };
    return { kind: "priced", micros: n * perRecipient };
  }
  if (matches(SEND_BATCH, req.method, req.path)) {
    const batch = req.json;
    if (!Array.isArray(batch)) return { kind: "invalid", message: "Keybrake needs a JSON array of emails to price this batch." };
    let total = 0;
    for (const email of batch) {
      const n = recipients(email);
      if (n === null) return { kind: "invalid", param: "to", message: "Every email in the batch needs to/cc/bcc as a string or a list." };
      total += n;
    }
    return { kind: "priced", micros: total * perRecipient };
  }
  if (matches(BROADCAST_CREATE, req.method, req.path)) {
    const send = (req.json as Record<string, unknown> | undefined)?.send;
    if (send !== undefined && send !== false) {
      return { kind: "invalid", param: "send", message: "A broadcast that sends mails its whole audience, which Keybrake cannot price: create it with send: false." };
    }
    return { kind: "priced", micros: 0 };
  }
  if (matches(MONEY_LATER, req.method, req.path)) return { kind: "unpriced", movesMoney: true };
  if (matches(FREE_WRITES, req.method, req.path)) return { kind: "priced", micros: 0 };
  return { kind: "unpriced" };
}

const ERROR_NAME: Record<number, string> = {
  400: "validation_error",
  401: "invalid_api_key",
  403: "invalid_access",
  413: "validation_error",
  429: "rate_limit_exceeded",
};

export const resend: VendorAdapter = {
  name: "resend",
  // API keys are Resend credentials: listing, minting or deleting one is never a vault key's business.
  credentialPaths: /^\/api-keys(\/|$)/i,
  secretFields: ["api_key"],
  idempotency: { vendorDedupes: true, mismatchStatus: 409 },
  ownPathPrefixes: ["/emails", "/domains", "/audiences", "/contacts", "/api-keys", "/broadcasts"],
  authorize(path, headers, secret) {
    headers.set("authorization", `Bearer ${secret.api_key}`);
    return path;
  },
  read: (req) => readWire(req, { type: "json" }),
  estimate,
  settle: (estimateMicros) => estimateMicros,
  requestId: (h) => h.get("x-request-id") ?? h.get("x-resend-request-id"),
  objectId(json) {
    if (!json || typeof json !== "object") return null;
    const j = json as { id?: unknown; data?: unknown };
    if (typeof j.id === "string") return j.id;
    if (Array.isArray(j.data)) return j.data.map((d) => (d as { id?: string }).id).filter(Boolean).join(",").slice(0, 500) || null;
    return null;
  },
  refusal(status, code, message) {
    const name = code === "idempotency_key_mismatch" ? "invalid_idempotent_request" : code === "idempotency_key_in_use" ? "concurrent_idempotent_requests" : (ERROR_NAME[status] ?? "application_error");
    return { status, body: { statusCode: status, name, message, keybrake_error: code }, headers: {} };
  },
};
