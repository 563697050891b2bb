import { decimalToMicros } from "../money.ts";
import { formValue, formValues } from "./form-reader.ts";
import { fixedPrice, matches, READ_METHODS, rules } from "./rules.ts";
import { countSmsSegments } from "./sms-segments.ts";
import { destinationRate } from "./twilio-destinations.ts";
import type { Estimate, PricedRequest, PricingContext, VendorAdapter } from "./types.ts";
import { readWire } from "./wire.ts";

/** Creating a message: Twilio answers Messages.json, Messages (XML) and its other formats alike. */
const SEND_MESSAGE = /^\/2010-04-01\/Accounts\/[^/]+\/Messages(\.[a-z]+)?$/i;
/** Updating (redacting, cancelling) a message or deleting one costs nothing. */
const FREE_WRITES = rules("POST /2010-04-01/Accounts/*/Messages/*", "DELETE /2010-04-01/Accounts/*/Messages/*");

/** Twilio refuses bodies over 1,600 characters (error 21617); Keybrake refuses them before counting segments. */
export const MAX_SMS_BODY = 1600;
/**
 * A Content template can hold MAX_SMS_BODY characters. The worst case is all of them
 * outside the BMP (emoji): UCS-2, two units each and never split, so 33 per 67-unit
 * segment: ceil(1600 / 33) = 49 segments.
 */
export const WORST_CASE_SEGMENTS = Math.ceil(MAX_SMS_BODY / 33);
const E164 = /^\+[1-9]\d{6,14}$/;
/** Twilio parameter names are read case-insensitively here: a "body" next to "Body" is refused as a repeat. */
const FORM = { keys: "flat" as const, caseInsensitive: true, repeatable: new Set(["mediaurl"]) };

function priceMessage(req: PricedRequest, ctx: PricingContext): Estimate {
  const get = (k: string) => formValue(req.form, k, true);
  const to = get("To");
  if (to === undefined || !E164.test(to)) {
    return { kind: "invalid", param: "To", message: "Keybrake prices a message by its destination: `To` must be one E.164 number (+ and digits)." };
  }
  const rate = destinationRate(ctx.pricing.twilio.destinationMicros, to);
  if (!rate) {
    return { kind: "invalid", param: "To", message: `Keybrake has no SMS rate for destination ${to.slice(0, 4)}…; add its prefix to the pricing file (twilio.destination_usd).` };
  }
  const body = get("Body") ?? "";
  if (body.length > MAX_SMS_BODY) return { kind: "invalid", param: "Body", message: `Body is longer than ${MAX_SMS_BODY} characters.` };
  let segments = countSmsSegments(body).segments;
  const contentSid = get("ContentSid");
  if (contentSid !== undefined) {
    const named = Object.hasOwn(ctx.pricing.twilio.contentSegments, contentSid) ? ctx.pricing.twilio.contentSegments[contentSid] : undefined;
    segments = Math.max(segments, named ?? WORST_CASE_SEGMENTS);
  }
  const media = formValues(req.form, "MediaUrl", true).length > 0 || get("SendAsMms")?.toLowerCase() === "true";
  // Outside +1, Twilio's MMS converter sends an SMS with a link instead: at least one more segment.
  const micros = media ? Math.max(ctx.pricing.twilio.mmsMicros, (segments + 1) * rate.micros) : segments * rate.micros;
  return { kind: "priced", micros };
}

function estimate(req: PricedRequest, ctx: PricingContext): Estimate {
  const fixed = fixedPrice(ctx.pricing, "twilio", req.method, req.path);
  if (fixed !== null) return { kind: "priced", micros: fixed };
  if (READ_METHODS.has(req.method)) return { kind: "priced", micros: 0 };
  if (req.method === "POST" && SEND_MESSAGE.test(req.path)) return priceMessage(req, ctx);
  if (matches(FREE_WRITES, req.method, req.path)) {
    const touchesBody = formValue(req.form, "Body", true);
    // Redacting sets Body to ""; anything else is not a free update.
    if (touchesBody !== undefined && touchesBody !== "") return { kind: "invalid", param: "Body", message: "Only Body=\"\" (redaction) or Status=canceled are free message updates." };
    return { kind: "priced", micros: 0 };
  }
  return { kind: "unpriced" }; // calls (per minute), lookups with add-ons, …
}

/**
 * Twilio reports `price` (negative, as text) once known; that settles. On create it is
 * null, and `num_segments` does not say what a segment cost at that destination, so the
 * estimate stands.
 */
function settle(estimateMicros: number, res: { json: unknown }): number {
  const m = res.json as { price?: unknown; price_unit?: unknown } | undefined;
  if (!m || typeof m !== "object") return estimateMicros;
  if (typeof m.price === "string" && (m.price_unit ?? "USD") === "USD") {
    const micros = decimalToMicros(m.price.replace(/^-/, ""));
    if (micros !== null) return micros;
  }
  return estimateMicros;
}

const TWILIO_CODE: Record<number, number> = { 400: 21000, 401: 20003, 403: 20403, 409: 20409, 413: 21617, 429: 20429 };

export const twilio: VendorAdapter = {
  name: "twilio",
  secretFields: ["account_sid", "auth_token"],
  // Twilio has no request idempotency: Keybrake replays answered repeats itself, but cannot dedupe an unknown outcome.
  idempotency: { vendorDedupes: false, mismatchStatus: 409 },
  ownPathPrefixes: ["/2010-04-01/"],
  // The account list and the account resource (it carries auth_token; POST creates subaccounts with their own),
  // and API keys: never a vault key's business.
  credentialPaths: /^\/2010-04-01\/accounts(\.[a-z]+)?$|^\/2010-04-01\/accounts\/[^/]+(\.[a-z]+)?$|^\/2010-04-01\/accounts\/[^/]+\/(keys|signingkeys)([./]|$)/i,
  authorize(path, headers, secret) {
    headers.set("authorization", "Basic " + btoa(`${secret.account_sid}:${secret.auth_token}`));
    // twilio-node puts its own (placeholder) Account SID in the path: swap in the real one.
    // Only the SID: an extension after it (`AC….json`) is the format asked for and stays.
    return path.replace(/^\/2010-04-01\/Accounts\/[^/.]+/, `/2010-04-01/Accounts/${secret.account_sid}`);
  },
  read: (req) => readWire(req, { type: "form", options: FORM }),
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
