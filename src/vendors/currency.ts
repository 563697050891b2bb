/**
 * Converting Stripe amounts (integers in a currency's smallest unit) into USD
 * micros, for reserving spend against a cap. All arithmetic is integer; the
 * conversion rounds up so a reservation is never smaller than the charge.
 */

/** Stripe's zero-decimal currencies: an API amount of 500 means 500 major units. */
const ZERO_DECIMAL = new Set([
  "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga",
  "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf",
]);

/** Stripe's three-decimal currencies: an API amount of 1234 means 1.234 major units. */
const THREE_DECIMAL = new Set(["bhd", "jod", "kwd", "omr", "tnd"]);

/**
 * Stripe's minor-unit exponent for a currency: 0 for zero-decimal currencies,
 * 3 for three-decimal ones, else 2.
 *
 * Stripe's "special cases" (ISK, HUF, TWD) are deliberately left at 2: they are
 * effectively whole-unit currencies for charges or payouts, but the API still
 * expresses their amounts in two-decimal form (ISK 5 is sent as `500`), and
 * API amounts are what we convert.
 */
export function currencyExponent(currency: string): 0 | 2 | 3 {
  const code = currency.toLowerCase();
  if (ZERO_DECIMAL.has(code)) return 0;
  if (THREE_DECIMAL.has(code)) return 3;
  return 2;
}

/**
 * USD micros for `amount` in the currency's smallest unit, given the rate as
 * micros of USD per ONE MAJOR unit of the currency. Rounds UP (never
 * under-reserve).
 *
 * Throws RangeError if `amount` is not a non-negative safe integer, the rate is
 * not a positive safe integer (a zero rate would make every charge free), or
 * the result does not fit in a safe integer.
 */
export function minorUnitsToUsdMicros(amount: number, currency: string, usdMicrosPerMajorUnit: number): number {
  if (!Number.isSafeInteger(amount) || amount < 0) {
    throw new RangeError(`amount must be a non-negative integer, got ${amount}`);
  }
  if (!Number.isSafeInteger(usdMicrosPerMajorUnit) || usdMicrosPerMajorUnit <= 0) {
    throw new RangeError(`rate must be a positive integer of USD micros, got ${usdMicrosPerMajorUnit}`);
  }
  // amount × rate easily exceeds 2^53 (e.g. 10^8 JPY × 10^4), hence BigInt.
  const divisor = 10n ** BigInt(currencyExponent(currency));
  const product = BigInt(amount) * BigInt(usdMicrosPerMajorUnit);
  const micros = (product + divisor - 1n) / divisor; // ceiling division; operands are non-negative
  if (micros > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new RangeError(`${amount} ${currency} is too large to convert to USD micros`);
  }
  return Number(micros);
}

/**
 * Default rates: currency (lowercase ISO 4217) → USD micros per one major unit.
 * Approximate static values, only a fallback; operators override them via the
 * pricing file. Very weak currencies still have a rate of at least a few
 * micros, which is why the unit is micros per MAJOR unit.
 */
export const DEFAULT_USD_MICROS_PER_MAJOR_UNIT: Readonly<Record<string, number>> = Object.freeze({
  usd: 1_000_000,
  // Major currencies
  eur: 1_080_000,
  gbp: 1_270_000,
  chf: 1_130_000,
  cad: 730_000,
  aud: 660_000,
  nzd: 600_000,
  jpy: 6_700,
  cny: 138_000,
  hkd: 128_000,
  sgd: 745_000,
  // Europe
  sek: 95_000,
  nok: 93_000,
  dkk: 145_000,
  pln: 250_000,
  czk: 43_000,
  huf: 2_750,
  isk: 7_200,
  ron: 217_000,
  bgn: 552_000,
  try: 29_000,
  // Americas
  mxn: 55_000,
  brl: 180_000,
  clp: 1_060,
  cop: 250,
  pen: 268_000,
  // Asia-Pacific
  inr: 12_000,
  krw: 740,
  twd: 31_000,
  thb: 28_000,
  php: 17_500,
  myr: 215_000,
  idr: 62,
  vnd: 40,
  // Middle East and Africa
  aed: 272_300,
  sar: 266_700,
  ils: 270_000,
  egp: 20_500,
  zar: 54_000,
  xof: 1_650,
  xaf: 1_650,
  // Three-decimal currencies
  bhd: 2_652_000,
  jod: 1_410_000,
  kwd: 3_250_000,
  omr: 2_597_000,
  tnd: 320_000,
});
