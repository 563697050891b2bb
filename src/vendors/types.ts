import type { EndpointRule } from "../domain/endpoints.ts";

/**
 * One adapter per vendor behind this interface: where its SDK puts the secret,
 * how the real credentials go on the wire, how a request is priced and a
 * response settled, and what its own error body looks like. Nothing here knows
 * about HTTP frameworks or the ledger.
 */
export const VENDORS = ["stripe", "twilio", "resend"] as const;
export type VendorName = (typeof VENDORS)[number];

export interface Pricing {
  /** USD micros per one major unit of each currency (lowercase ISO code). */
  usdMicrosPerMajorUnit: Readonly<Record<string, number>>;
  twilio: {
    /** Fallback per-segment rate, used only where a destination rate is missing from an older pricing file shape. */
    smsSegmentMicros: number;
    mmsMicros: number;
    /** E.164 prefix without "+" (e.g. "44", "1876") → USD micros per SMS segment; longest prefix wins. */
    destinationMicros: Readonly<Record<string, number>>;
    /** ContentSid (HX…) → segments it is billed as; a template not named here is priced at the worst case. */
    contentSegments: Readonly<Record<string, number>>;
  };
  resend: { perRecipientMicros: number };
  /** Operator rules that win over the built-in ones: "METHOD /path" (with * segments) → micros per call. */
  fixed: Readonly<Record<VendorName, readonly { endpoint: string; rule: EndpointRule; micros: number }[]>>;
}

/** A request as it arrived, before the vendor's reader has looked at it. */
export interface RawRequest {
  method: string;
  /** Normalised path as forwarded, without the /{vendor} prefix. */
  path: string;
  /** "?…" or "". */
  query: string;
  contentType: string;
  contentEncoding: string;
  body: Uint8Array;
}

/** What the vendor's own parser will see: the single meaning of the body, and the bytes to forward. */
export type WireRead =
  | { ok: true; body: Uint8Array; form: [string, string][]; json: unknown }
  | { ok: false; message: string };

export interface PricedRequest extends RawRequest {
  /** Form pairs (Stripe, Twilio), in order, each key once unless it is a list. */
  form: [string, string][];
  /** Parsed JSON body (Resend), undefined when empty. */
  json: unknown;
}

/** What a priced call of one key produced at the vendor (or last priced on it): the record later calls are priced from. */
export interface PricedObject {
  objectId: string;
  kind: string;
  amount: number;
  currency: string;
  /** USD micros this key has been charged for this object so far. */
  countedMicros: number;
}

export interface PricingContext {
  pricing: Pricing;
  /** The record of this object written by a priced call of the SAME key, or null. */
  pricedObject(objectId: string): PricedObject | null;
}

/** To write after a 2xx: `objectId` null means "the id of the object in the response". */
export type ObjectRecord = Omit<PricedObject, "objectId"> & { objectId: string | null };

export type Estimate =
  | { kind: "priced"; micros: number; record?: ObjectRecord }
  /** A write with no price rule: refused unless the key allows unpriced calls — or, when it can move money later, always. */
  | { kind: "unpriced"; movesMoney?: boolean }
  /** The request cannot be priced as sent (unknown currency, bad amount): refused with this message. */
  | { kind: "invalid"; message: string; param?: string }
  /** Priced from the object as the vendor has it now: Keybrake GETs `path` with the real secret, then calls `price`. */
  | { kind: "lookup"; path: string; price(object: Record<string, unknown>): Estimate };

export interface VendorResponse {
  status: number;
  headers: Headers;
  /** Parsed JSON body when it was JSON, else undefined. */
  json: unknown;
}

export interface Refusal {
  status: number;
  body: unknown;
  headers: Record<string, string>;
}

export type VendorSecret = Readonly<Record<string, string>>;

export interface VendorAdapter {
  readonly name: VendorName;
  /** The fields of its secret, as set by PUT /vendors/{vendor}; the first is the one shown by last 4. */
  readonly secretFields: readonly string[];
  /**
   * vendorDedupes: the vendor itself honours Idempotency-Key, so a retry after an unknown outcome can be
   * forwarded on the first attempt's reservation. mismatchStatus: its status for a key reused with another body.
   */
  readonly idempotency: { vendorDedupes: boolean; mismatchStatus: number };
  /** Path prefixes its SDK sends, so a request with no /{vendor} prefix can be recognised. */
  readonly ownPathPrefixes: readonly string[];
  /**
   * Paths (as forwarded, matched case-insensitively) that read, mint or revoke the vendor's own
   * credentials: never forwarded, whatever a key's allowlist or allow_unpriced says. A vault key
   * that could mint a real key would have no cap at all.
   */
  readonly credentialPaths: RegExp;
  /** Puts the real credentials on the outgoing headers; returns the path to forward (Twilio swaps in the real Account SID). */
  authorize(path: string, headers: Headers, secret: VendorSecret): string;
  /** Reads the request exactly as the vendor will (content type, encoding, query, body), or says what is ambiguous. */
  read(req: RawRequest): WireRead;
  estimate(req: PricedRequest, ctx: PricingContext): Estimate;
  /** Actual cost of a 2xx answer; falls back to the estimate where the vendor does not say. */
  settle(estimateMicros: number, res: VendorResponse, ctx: PricingContext): number;
  requestId(headers: Headers): string | null;
  objectId(json: unknown): string | null;
  /** A refusal made by Keybrake, in this vendor's error shape so its SDK raises its usual exception. */
  refusal(status: number, code: string, message: string): Refusal;
}
