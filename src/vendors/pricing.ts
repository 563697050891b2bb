import { readFileSync } from "node:fs";
import { z } from "zod";
import { compileAllowlist, parseEndpointRule } from "../domain/endpoints.ts";
import { decimalToMicros } from "../money.ts";
import { DEFAULT_USD_MICROS_PER_MAJOR_UNIT } from "./currency.ts";
import { DEFAULT_DESTINATION_MICROS } from "./twilio-destinations.ts";
import { VENDORS, type Pricing, type VendorName } from "./types.ts";

export const DEFAULT_PRICING: Pricing = {
  usdMicrosPerMajorUnit: DEFAULT_USD_MICROS_PER_MAJOR_UNIT,
  twilio: { smsSegmentMicros: 8_300, mmsMicros: 20_000, destinationMicros: DEFAULT_DESTINATION_MICROS, contentSegments: {} },
  resend: { perRecipientMicros: 900 },
  fixed: { stripe: [], twilio: [], resend: [] },
};

const usd = z.number().transform((n, ctx) => {
  const m = n >= 0 ? decimalToMicros(n) : null;
  if (m === null) {
    ctx.addIssue({ code: "custom", message: "must be a USD amount ≥ 0 with at most 6 decimals" });
    return z.NEVER;
  }
  return m;
});

const rate = z.number().positive().transform((n) => Math.round(n * 1_000_000));

const endpointKey = z.string().refine((e) => typeof parseEndpointRule(e) !== "string", 'must be "METHOD /path"');

/**
 * KEYBRAKE_PRICING_FILE: every field optional, merged over the built-in table.
 * { "currency_rates_usd": {"eur": 1.08},
 *   "twilio": {"sms_segment_usd": 0.0079, "mms_usd": 0.02, "destination_usd": {"+44": 0.0524},
 *              "content_sid_segments": {"HX…": 2}},
 *   "resend": {"per_recipient_usd": 0.0009}, "fixed_usd": {"stripe": {"POST /v1/customers": 0}} }
 */
const PricingFile = z.strictObject({
  currency_rates_usd: z.record(z.string().regex(/^[a-zA-Z]{3}$/, "currency codes are 3 letters"), rate).optional(),
  twilio: z
    .strictObject({
      /** The +1 (US/Canada) rate, kept from the first pricing-file shape. */
      sms_segment_usd: usd.optional(),
      mms_usd: usd.optional(),
      destination_usd: z.record(z.string().regex(/^\+?[1-9]\d{0,5}$/, 'destination prefixes are "+" and 1–6 digits'), usd).optional(),
      content_sid_segments: z.record(z.string().regex(/^HX[0-9a-fA-F]{32}$/, "ContentSids are HX + 32 hex digits"), z.number().int().min(1).max(49)).optional(),
    })
    .optional(),
  resend: z.strictObject({ per_recipient_usd: usd.optional() }).optional(),
  fixed_usd: z.partialRecord(z.enum(VENDORS), z.record(endpointKey, usd)).optional(),
});

export function loadPricing(file?: string): Pricing {
  if (!file) return DEFAULT_PRICING;
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, "utf8"));
  } catch (e) {
    throw new Error(`KEYBRAKE_PRICING_FILE: cannot read ${file} as JSON (${(e as Error).message})`);
  }
  const parsed = PricingFile.safeParse(raw);
  if (!parsed.success) {
    const i = parsed.error.issues[0]!;
    throw new Error(`KEYBRAKE_PRICING_FILE: ${i.path.join(".") || "(file)"} ${i.message}`);
  }
  const p = parsed.data;
  const rates: Record<string, number> = { ...DEFAULT_USD_MICROS_PER_MAJOR_UNIT };
  for (const [c, r] of Object.entries(p.currency_rates_usd ?? {})) rates[c.toLowerCase()] = r;
  // Compiled here, once: they are matched on every priced call.
  const fixed = { stripe: [], twilio: [], resend: [] } as Record<VendorName, Pricing["fixed"][VendorName][number][]>;
  for (const [vendor, rules] of Object.entries(p.fixed_usd ?? {})) {
    for (const [endpoint, micros] of Object.entries(rules ?? {})) {
      fixed[vendor as VendorName].push({ endpoint, rule: compileAllowlist([endpoint])[0]!, micros });
    }
  }
  return {
    usdMicrosPerMajorUnit: rates,
    twilio: {
      smsSegmentMicros: p.twilio?.sms_segment_usd ?? DEFAULT_PRICING.twilio.smsSegmentMicros,
      mmsMicros: p.twilio?.mms_usd ?? DEFAULT_PRICING.twilio.mmsMicros,
      destinationMicros: destinations(p.twilio?.sms_segment_usd, p.twilio?.destination_usd),
      contentSegments: p.twilio?.content_sid_segments ?? {},
    },
    resend: { perRecipientMicros: p.resend?.per_recipient_usd ?? DEFAULT_PRICING.resend.perRecipientMicros },
    fixed,
  };
}

function destinations(usRate: number | undefined, overrides: Record<string, number> | undefined): Record<string, number> {
  const table: Record<string, number> = { ...DEFAULT_DESTINATION_MICROS };
  if (usRate !== undefined) table["1"] = usRate;
  for (const [prefix, micros] of Object.entries(overrides ?? {})) table[prefix.replace(/^\+/, "")] = micros;
  return table;
}
