import { decimalToMicros } from "../money.ts";
import { fixedPrice, matches, parseForm, READ_METHODS, rules } from "./rules.ts";
import { countSmsSegments } from "./sms-segments.ts";
import type { Estimate, PricedRequest, PricingContext, VendorAdapter } from "./types.ts";

const SEND_MESSAGE = rules("POST /2010-04-01/Accounts/*/Messages.json");
/** Updating (redacting, cancelling) a message or deleting one costs nothing. */
const FREE_WRITES = rules("POST /2010-04-01/Accounts/*/Messages/*", "DELETE /2010-04-01/Accounts/*/Messages/*");

function estimate(req: PricedRequest, ctx: PricingContext): Estimate {
  const fixed = fixedPrice(ctx.pricing, "twilio", req.method, req.path);
  if (fixed !== null) return { kind: "priced", micros: fixed };
  if (READ_METHODS.has(req.method)) return { kind: "priced", micros: 0 };
  if (matches(SEND_MESSAGE, req.method, req.path)) {
    const form = parseForm(req.body);
    if (form.getAll("MediaUrl").length > 0) return { kind: "priced", micros: ctx.pricing.twilio.mmsMicros };
    const { segments } = countSmsSegments(form.get("Body") ?? "");
    return { kind: "priced", micros: segments * ctx.pricing.twilio.smsSegmentMicros };
  }
  if (matches(FREE_WRITES, req.method, req.path)) return { kind: "priced", micros: 0 };
  return { kind: "unpriced" }; // calls (per minute), lookups with add-ons, …
}

/** Twilio reports `price` (negative, as text) once known, else `num_segments`; either refines the estimate. */
function settle(estimateMicros: number, res: { json: unknown }, ctx: PricingContext): number {
  const m = res.json as { price?: unknown; price_unit?: unknown; num_segments?: unknown; num_media?: unknown } | undefined;
  if (!m || typeof m !== "object") return estimateMicros;
  if (typeof m.price === "string" && (m.price_unit ?? "USD") === "USD") {
    const micros = decimalToMicros(m.price.replace(/^-/, ""));
    if (micros !== null) return micros;
  }
  const segments = Number(m.num_segments);
  if (Number(m.num_media) === 0 && Number.isInteger(segments) && segments > 0) return segments * ctx.pricing.twilio.smsSegmentMicros;
  return estimateMicros;
}

const TWILIO_CODE: Record<number, number> = { 400: 21000, 401: 20003, 403: 20403, 409: 20409, 413: 21617, 429: 20429 };

export const twilio: VendorAdapter = {
  name: "twilio",
  secretFields: ["account_sid", "auth_token"],
  // Twilio has no request idempotency: Keybrake replays answered repeats itself, but cannot dedupe an unknown outcome.
  idempotency: { vendorDedupes: false, mismatchStatus: 409 },
  ownPathPrefixes: ["/2010-04-01/"],
  authorize(path, headers, secret) {
    headers.set("authorization", "Basic " + btoa(`${secret.account_sid}:${secret.auth_token}`));
    // twilio-node puts its own (placeholder) Account SID in the path: swap in the real one.
    return path.replace(/^\/2010-04-01\/Accounts\/[^/]+/, `/2010-04-01/Accounts/${secret.account_sid}`);
  },
  estimate,
  settle,
  requestId: (h) => h.get("twilio-request-id"),
  objectId: (json) => (json && typeof (json as { sid?: unknown }).sid === "string" ? (json as { sid: string }).sid : null),
  refusal(status, code, message) {
    const twilioCode = TWILIO_CODE[status] ?? 20001;
    return {
      status,
      // twilio-node's RestException keeps `details`, so that is where callers find Keybrake's own code.
      body: { code: twilioCode, message, more_info: `https://www.twilio.com/docs/errors/${twilioCode}`, status, details: { keybrake_error: code } },
      headers: {},
    };
  },
};
