import type { AuditRow } from "../db/schema.ts";
import { utcDay } from "./time.ts";

/**
 * Shapes settled spend into series a chart can draw. Pure functions over
 * what AuditService returns; no database access here.
 */

export const OTHER_RUNS = "Other runs";

export interface DailySeries {
  /** Every UTC day in the window, oldest first, including days with no spend. */
  days: string[];
  /** The biggest runs by spend, then everything else folded into one series. */
  series: { label: string; micros: number[]; total: number }[];
  /** Highest single-day total, for the chart's scale. */
  peak: number;
}

/** `dailySpend` rows → one series per run over `days` days ending today; at most `top` runs are kept apart. */
export function dailySeries(points: readonly { day: string; label: string; micros: number }[], now: number, days: number, top = 6): DailySeries {
  const dayList: string[] = [];
  for (let i = days - 1; i >= 0; i--) dayList.push(utcDay(now - i * 86_400_000));
  const index = new Map(dayList.map((d, i) => [d, i]));
  const byLabel = new Map<string, number[]>();
  for (const p of points) {
    const i = index.get(p.day);
    if (i === undefined || p.micros === 0) continue;
    const row = byLabel.get(p.label) ?? new Array<number>(days).fill(0);
    row[i]! += p.micros;
    byLabel.set(p.label, row);
  }
  const ranked = [...byLabel.entries()]
    .map(([label, micros]) => ({ label, micros, total: micros.reduce((a, b) => a + b, 0) }))
    .sort((a, b) => b.total - a.total || a.label.localeCompare(b.label));
  const series = ranked.slice(0, top);
  const rest = ranked.slice(top);
  if (rest.length) {
    const micros = new Array<number>(days).fill(0);
    for (const r of rest) r.micros.forEach((m, i) => (micros[i]! += m));
    series.push({ label: OTHER_RUNS, micros, total: micros.reduce((a, b) => a + b, 0) });
  }
  const peak = Math.max(0, ...dayList.map((_, i) => series.reduce((sum, s) => sum + s.micros[i]!, 0)));
  return { days: dayList, series, peak };
}

/**
 * A run's settled spend as a running total over time, oldest first. Long runs
 * are thinned to at most `maxPoints` (keeping the last point of each stretch),
 * which a chart cannot tell apart from every call.
 */
export async function cumulativeSpend(rows: AsyncIterable<AuditRow> | Iterable<AuditRow>, maxPoints = 400): Promise<{ t: number; micros: number }[]> {
  const settled: { t: number; m: number }[] = [];
  for await (const r of rows) if (r.ledgerState === "settled" && r.settledMicros) settled.push({ t: r.ts, m: r.settledMicros });
  settled.sort((a, b) => a.t - b.t);
  let total = 0;
  const points = settled.map((p) => ({ t: p.t, micros: (total += p.m) }));
  if (points.length <= maxPoints) return points;
  const step = points.length / maxPoints;
  const thinned: { t: number; micros: number }[] = [];
  for (let i = 1; i <= maxPoints; i++) thinned.push(points[Math.min(points.length, Math.round(i * step)) - 1]!);
  return thinned;
}
