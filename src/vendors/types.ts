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
  twilio: { smsSegmentMicros: number; mmsMicros: number };
  resend: { perRecipientMicros: number };
  /** Operator rules that win over the built-in ones: "METHOD /path" (with * segments) → micros per call. */
  fixed: Readonly<Record<VendorName, readonly { endpoint: string; rule: EndpointRule; micros: number }[]>>;
}

export interface PricedRequest {
  method: string;
  /** Normalised path as forwarded, without the /{vendor} prefix. */
  path: string;
  query: string;
  contentType: string;
  body: Uint8Array;
}

export interface PricingContext {
  pricing: Pricing;
  /** True when this vendor object was created through Keybrake (its cost was counted then). */
  createdThroughKeybrake(objectId: string): boolean;
}

export type Estimate =
  | { kind: "priced"; micros: number }
  /** A write with no price rule: refused unless the key allows unpriced calls. */
  | { kind: "unpriced" }
  /** The request cannot be priced as sent (unknown currency, bad amount): refused with this message. */
  | { kind: "invalid"; message: string; param?: string };

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
  /** Puts the real credentials on the outgoing headers; returns the path to forward (Twilio swaps in the real Account SID). */
  authorize(path: string, headers: Headers, secret: VendorSecret): string;
  estimate(req: PricedRequest, ctx: PricingContext): Estimate;
  /** Actual cost of a 2xx answer; falls back to the estimate where the vendor does not say. */
  settle(estimateMicros: number, res: VendorResponse, ctx: PricingContext): number;
  requestId(headers: Headers): string | null;
  objectId(json: unknown): string | null;
  /** A refusal made by Keybrake, in this vendor's error shape so its SDK raises its usual exception. */
  refusal(status: number, code: string, message: string): Refusal;
}
