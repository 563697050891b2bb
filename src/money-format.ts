/**
 * The one way money is written for people (admin pages, refusal messages):
 * cents from $1 up ("$94.22", "$1,250.00"), and below $1 up to 4 significant
 * digits so an SMS never reads as $0.00 ("$0.0083", "$0.1235", "$0.50").
 * Machine-readable places (headers, JSON, CSV) keep exact decimals instead.
 */
const cents = new Intl.NumberFormat("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });

export function formatUsdMicros(micros: number): string {
  const sign = micros < 0 ? "-" : "";
  const abs = Math.round(Math.abs(micros));
  if (abs >= 1_000_000 || abs === 0) return `${sign}$${cents.format(Math.round(abs / 10_000) / 100)}`;
  // 6 decimals, then keep 4 significant digits from the first non-zero one (rounded half up).
  const digits = String(abs).padStart(6, "0");
  const lead = digits.search(/[1-9]/);
  const keep = Math.min(6, lead + 4);
  const scale = 10 ** (6 - keep);
  const rounded = Math.round(abs / scale) * scale;
  if (rounded >= 1_000_000) return `${sign}$1.00`;
  let frac = String(rounded).padStart(6, "0").slice(0, keep).replace(/0+$/, "");
  if (frac.length < 2) frac = frac.padEnd(2, "0");
  return `${sign}$0.${frac}`;
}

export function formatUsd(amount: number): string {
  return formatUsdMicros(Math.round(amount * 1_000_000));
}
