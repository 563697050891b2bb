import { formatUsd, formatUsdMicros } from "../src/money-format.ts";
/** Display formatting shared by the admin views. Pure: values in, text out. */

/** The one money format (src/money-format.ts): cents from $1 up, up to 4 significant digits below. */
export function usd(amount: number | null | undefined): string {
  if (amount === null || amount === undefined) return "—";
  return formatUsd(amount);
}

export function usdMicros(micros: number): string {
  return formatUsdMicros(micros);
}

/** "2026-11-22 14:05:09 UTC": every time on these pages is UTC, like the caps. */
export function utc(time: string | number | null | undefined): string {
  if (time === null || time === undefined) return "—";
  const iso = new Date(time).toISOString();
  return `${iso.slice(0, 10)} ${iso.slice(11, 19)} UTC`;
}

/** "in 5h 59m" / "3m ago": how far a time is from now, coarse on purpose. */
export function relative(time: string | number, now = Date.now()): string {
  const ms = new Date(time).getTime() - now;
  const abs = Math.abs(ms);
  const m = Math.round(abs / 60_000);
  const text = m < 1 ? "under a minute" : m < 60 ? `${m}m` : m < 48 * 60 ? `${Math.floor(m / 60)}h ${m % 60}m` : `${Math.round(m / 1440)}d`;
  return ms >= 0 ? `in ${text}` : `${text} ago`;
}

/** path + query string from the non-empty entries of `params`. */
export function href(path: string, params: Record<string, string | number | null | undefined>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}
