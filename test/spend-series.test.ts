import { describe, expect, test } from "bun:test";
import type { AuditRow } from "../src/db/schema.ts";
import { cumulativeSpend, dailySeries, OTHER_RUNS } from "../src/domain/spend-series.ts";

const NOW = Date.parse("2026-11-22T15:00:00Z");

describe("dailySeries", () => {
  test("fills every day of the window, keeps the biggest runs apart and folds the rest", () => {
    const points = [
      { day: "2026-11-22", label: "a", micros: 5_000_000 },
      { day: "2026-11-21", label: "b", micros: 3_000_000 },
      { day: "2026-11-22", label: "c", micros: 1_000_000 },
      { day: "2026-11-20", label: "d", micros: 500_000 },
      { day: "2026-10-01", label: "a", micros: 9_000_000 }, // outside the window
    ];
    const d = dailySeries(points, NOW, 3, 2);
    expect(d.days).toEqual(["2026-11-20", "2026-11-21", "2026-11-22"]);
    expect(d.series.map((s) => [s.label, s.micros])).toEqual([
      ["a", [0, 0, 5_000_000]],
      ["b", [0, 3_000_000, 0]],
      [OTHER_RUNS, [500_000, 0, 1_000_000]],
    ]);
    expect(d.peak).toBe(6_000_000);
  });

  test("no spend: empty series and a zero peak", () => {
    expect(dailySeries([], NOW, 30)).toMatchObject({ series: [], peak: 0 });
  });
});

describe("cumulativeSpend", () => {
  const row = (ts: number, settled: number | null, state = "settled") => ({ ts, settledMicros: settled, ledgerState: state }) as AuditRow;

  test("a running total of settled calls, oldest first; refused and unsettled calls add nothing", async () => {
    const rows = [row(3000, 2_000_000), row(1000, 1_000_000), row(2000, null, "none"), row(2500, 7_000_000, "unsettled")];
    expect(await cumulativeSpend(rows)).toEqual([
      { t: 1000, micros: 1_000_000 },
      { t: 3000, micros: 3_000_000 },
    ]);
  });

  test("long runs are thinned but still end on the true total", async () => {
    const rows = Array.from({ length: 1000 }, (_, i) => row(i, 1));
    const points = await cumulativeSpend(rows, 100);
    expect(points).toHaveLength(100);
    expect(points.at(-1)).toEqual({ t: 999, micros: 1000 });
  });
});
