/**
 * Money is kept as integer micro-dollars (1 USD = 1_000_000). Conversions from
 * the decimal numbers users type happen here and nowhere else, and never
 * through float multiplication.
 */
export const MICROS_PER_USD = 1_000_000;

/** Parses a non-negative decimal with at most 6 fractional digits into micros; null if it is not one. */
export function decimalToMicros(value: number | string): number | null {
  if (typeof value === "number" && !Number.isFinite(value)) return null;
  let text = typeof value === "number" ? numberToPlainString(value) : value.trim();
  const m = /^(\d+)(?:\.(\d*))?$/.exec(text);
  if (!m) return null;
  const frac = (m[2] ?? "").replace(/0+$/, "");
  if (frac.length > 6) return null;
  const micros = Number(m[1]) * MICROS_PER_USD + Number(frac.padEnd(6, "0") || "0");
  return Number.isSafeInteger(micros) ? micros : null;
}

/** 1e-7 → "0.0000001": JS prints small and large numbers in exponent form. */
function numberToPlainString(n: number): string {
  const s = String(n);
  if (!/e/i.test(s)) return s;
  return n.toFixed(20).replace(/\.?0+$/, "");
}

/** micros → "12.340000"-style fixed 6-decimal string, exact. */
export function microsToDecimalString(micros: number): string {
  const sign = micros < 0 ? "-" : "";
  const abs = Math.abs(micros);
  const whole = Math.floor(abs / MICROS_PER_USD);
  const frac = String(abs % MICROS_PER_USD).padStart(6, "0");
  return `${sign}${whole}.${frac}`;
}

/** micros → JSON number in USD (for API responses only; the ledger never holds it). */
export function microsToUsd(micros: number): number {
  return Number(microsToDecimalString(micros));
}
