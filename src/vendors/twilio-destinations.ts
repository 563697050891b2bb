/**
 * Built-in Twilio SMS rates by destination: E.164 country (or NANP area) prefix
 * without "+" → USD micros per outbound SMS segment.
 *
 * Where the numbers come from: Twilio's public per-country SMS price pages
 * (twilio.com/en-us/sms/pricing/<country>, outbound SMS, long code, as published in
 * 2024–2025), rounded UP to the next 0.1 cent where carriers differ, so a reservation
 * is not smaller than the charge. Twilio changes them; operators override or extend the
 * table with `twilio.destination_usd` in KEYBRAKE_PRICING_FILE. A destination with no
 * prefix here is refused, never priced at the US rate: premium and "SMS pumping"
 * destinations cost 5–100× a US segment.
 */
export const DEFAULT_DESTINATION_MICROS: Readonly<Record<string, number>> = Object.freeze({
  // North America (NANP +1): US and Canada. Caribbean NANP areas bill as their own countries.
  "1": 8_300,
  "1242": 130_000, "1246": 130_000, "1264": 130_000, "1268": 130_000, "1284": 130_000, "1345": 130_000,
  "1441": 130_000, "1473": 130_000, "1649": 130_000, "1658": 130_000, "1664": 130_000, "1721": 130_000,
  "1758": 130_000, "1767": 130_000, "1784": 130_000, "1809": 130_000, "1829": 130_000, "1849": 130_000,
  "1868": 130_000, "1869": 130_000, "1876": 130_000,
  // Europe
  "44": 52_000, // United Kingdom
  "353": 86_000, // Ireland
  "33": 86_000, // France
  "49": 99_000, // Germany
  "34": 86_000, // Spain
  "39": 91_000, // Italy
  "31": 106_000, // Netherlands
  "32": 98_000, // Belgium
  "41": 70_000, // Switzerland
  "43": 110_000, // Austria
  "45": 60_000, // Denmark
  "46": 70_000, // Sweden
  "47": 80_000, // Norway
  "48": 50_000, // Poland
  "351": 45_000, // Portugal
  // Asia-Pacific
  "61": 52_000, // Australia
  "64": 130_000, // New Zealand
  "81": 80_000, // Japan
  "65": 50_000, // Singapore
  "91": 84_000, // India
  // Americas
  "52": 55_000, // Mexico
  "55": 55_000, // Brazil
});

/** Longest prefix of an E.164 number ("+4479…") that has a rate, or null. */
export function destinationRate(table: Readonly<Record<string, number>>, e164: string): { prefix: string; micros: number } | null {
  const digits = e164.slice(1);
  for (let n = Math.min(digits.length, 6); n >= 1; n--) {
    const micros = table[digits.slice(0, n)];
    if (micros !== undefined) return { prefix: digits.slice(0, n), micros };
  }
  return null;
}
