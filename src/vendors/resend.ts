import { fixedPrice, matches, parseJson, READ_METHODS, rules } from "./rules.ts";
import type { Estimate, PricedRequest, PricingContext, VendorAdapter } from "./types.ts";

const SEND = rules("POST /emails");
const SEND_BATCH = rules("POST /emails/batch");
/** Managing domains, audiences, contacts, keys and scheduled emails sends nothing. */
const FREE_WRITES = rules(
  "* /emails/*",
  "* /domains",
  "* /domains/*",
  "* /domains/*/*",
  "* /audiences",
  "* /audiences/*",
  "* /audiences/*/contacts",
  "* /audiences/*/contacts/*",
  "* /contacts",
  "* /contacts/*",
  "* /api-keys",
  "* /api-keys/*",
  "* /broadcasts",
  "* /broadcasts/*",
);

function recipients(email: unknown): number | null {
  if (!email || typeof email !== "object") return null;
  let n = 0;
  for (const field of ["to", "cc", "bcc"] as const) {
    const v = (email as Record<string, unknown>)[field];
    if (v === undefined || v === null) continue;
    if (typeof v === "string") n += 1;
    else if (Array.isArray(v)) n += v.length;
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
    const n = recipients(parseJson(req.body));
    if (n === null) return { kind: "invalid", param: "to", message: "Keybrake needs a JSON body with to/cc/bcc to price this email." };
    return { kind: "priced", micros: n * perRecipient };
  }
  if (matches(SEND_BATCH, req.method, req.path)) {
    const batch = parseJson(req.body);
    if (!Array.isArray(batch)) return { kind: "invalid", message: "Keybrake needs a JSON array of emails to price this batch." };
    let total = 0;
    for (const email of batch) {
      const n = recipients(email);
      if (n === null) return { kind: "invalid", param: "to", message: "Every email in the batch needs to/cc/bcc as a string or a list." };
      total += n;
    }
    return { kind: "priced", micros: total * perRecipient };
  }
  if (matches(FREE_WRITES, req.method, req.path) && !req.path.endsWith("/send")) return { kind: "priced", micros: 0 };
  return { kind: "unpriced" }; // e.g. POST /broadcasts/{id}/send: its audience size is not in the request
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
  secretFields: ["api_key"],
  idempotency: { vendorDedupes: true, mismatchStatus: 409 },
  ownPathPrefixes: ["/emails", "/domains", "/audiences", "/contacts", "/api-keys", "/broadcasts"],
  authorize(path, headers, secret) {
    headers.set("authorization", `Bearer ${secret.api_key}`);
    return path;
  },
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
