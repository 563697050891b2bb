import { expect, test } from "bun:test";
import { labelPrefixes } from "../src/domain/runs.ts";
import { formatDuration } from "../src/duration.ts";
import { moneyOrText } from "../src/http/admin-forms.ts";
import { formatUsdMicros } from "../src/money-format.ts";
import { clientStatus, shortPath } from "../views/audit.tsx";
import { timeTicks } from "../views/chart.tsx";

/** The small pure pieces the admin pages lean on, as tables of cases. */

test("one money format: cents from $1 up, up to 4 significant digits below", () => {
  const cases: [micros: number, text: string][] = [
    [0, "$0.00"],
    [1, "$0.000001"],
    [900, "$0.0009"],
    [2_700, "$0.0027"],
    [8_300, "$0.0083"],
    [10_000, "$0.01"],
    [123_456, "$0.1235"],
    [500_000, "$0.50"],
    [999_999, "$1.00"],
    [1_000_000, "$1.00"],
    [58_000_000, "$58.00"],
    [94_217_000, "$94.22"],
    [600_000_000, "$600.00"],
    [1_234_567_890, "$1,234.57"],
    [-29_000_000, "-$29.00"],
  ];
  expect(cases.map(([m]) => [m, formatUsdMicros(m)])).toEqual(cases);
});

test("money as typed in the form", () => {
  const cases: [typed: string, read: number | string][] = [
    ["500", 500],
    ["$500", 500],
    ["$ 1,250.50", 1250.5],
    ["1,000,000", 1000000],
    ["0.0083", 0.0083],
    [".5", 0.5],
    ["12 USD", 12],
    ["1,25", "1,25"],
    ["12,34,567", "12,34,567"],
    ["lots", "lots"],
    ["-5", "-5"],
  ];
  expect(cases.map(([t]) => [t, moneyOrText(t)])).toEqual(cases);
});

test("a duration limit is said back in the unit typed, or the largest exact one", () => {
  const cases: [typed: string | undefined, seconds: number, text: string][] = [
    ["40d", 2_592_000, "30d"],
    ["1000h", 2_592_000, "720h"],
    ["99999m", 2_592_000, "43200m"],
    ["2d", 129_600, "36h"],
    [undefined, 86_400, "1d"],
    ["forever", 90, "90s"],
  ];
  expect(cases.map(([t, s]) => [t, s, formatDuration(s * 1000, t)])).toEqual(cases);
});

test("the status a client got: the vendor's where it answered, Keybrake's refusal status otherwise", () => {
  const cases: [outcome: string, vendorStatus: number | null, want: ReturnType<typeof clientStatus>][] = [
    ["forwarded", 200, { status: 200, byKeybrake: false }],
    ["forwarded", 402, { status: 402, byKeybrake: false }],
    ["cap_hit", null, { status: 429, byKeybrake: true }],
    ["endpoint_denied", null, { status: 403, byKeybrake: true }],
    ["revoked", null, { status: 401, byKeybrake: true }],
    ["expired", null, { status: 401, byKeybrake: true }],
    ["invalid_key", null, { status: 401, byKeybrake: true }],
    ["invalid_request", null, { status: 400, byKeybrake: true }],
    ["replayed", null, { status: null, byKeybrake: false }],
  ];
  for (const [outcome, vendor_status, want] of cases) expect([outcome, clientStatus({ outcome, vendor_status })]).toEqual([outcome, want]);
});

test("long paths keep their start and end on one line", () => {
  expect(shortPath("/v1/payment_intents")).toBe("/v1/payment_intents");
  const long = "/2010-04-01/Accounts/••••cdef/Messages/SM0123456789abcdef0123456789abcdef.json";
  const short = shortPath(long);
  expect(short.length).toBe(34);
  expect(short).toStartWith("/2010-04-01");
  expect(short).toEndWith("abcdef.json");
  expect(short).toContain("…");
});

test("time axis ticks are round, at most 6, and written for their span", () => {
  const t0 = Date.parse("2026-11-22T13:07:00Z");
  const hour = timeTicks(t0, t0 + 3_600_000);
  expect(hour.length).toBeLessThanOrEqual(6);
  expect(hour.map((t) => t.text)).toEqual(["13:15", "13:30", "13:45", "14:00"]);
  const days = timeTicks(t0, t0 + 3 * 86_400_000);
  expect(days.map((t) => t.text)).toEqual(["11-23 00:00", "11-23 12:00", "11-24 00:00", "11-24 12:00", "11-25 00:00", "11-25 12:00"]);
  // Calls within one second: both ends, to the second.
  expect(timeTicks(t0, t0 + 300).map((t) => t.text)).toEqual(["13:07:00", "13:07:00"]);
});

test("run prefixes offered as suggestions", () => {
  expect(labelPrefixes(["airflow-billing/scheduled__1", "airflow-billing/manual__2", "kestra/x/y", "plain"])).toEqual([
    "airflow-billing/*",
    "kestra/x/*",
  ]);
});
