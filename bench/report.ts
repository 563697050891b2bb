/**
 * Turns bench/results/{load,contention,audit-scale,ledger-backends}.json into one Markdown
 * report: printed to stdout and saved as bench/results/latest.md.
 *
 * Exit status: 1 if any correctness check failed or a part left no results;
 * performance targets are reported as met / not met and only fail the run
 * with BENCH_STRICT=1 (numbers on a shared 2-core VM are too noisy to gate CI on).
 */
import { writeFileSync } from "node:fs";
import { cpus, release } from "node:os";
import { join } from "node:path";
import { keybrakeCommand, median, readResult, RESULTS_DIR, SMOKE, type Check } from "./lib.ts";
import type { Run, Summary } from "./load.ts";

interface LoadResult {
  config: { rounds: number; seconds: number; slowSeconds: number };
  elapsedSeconds: number;
  summary: Summary[];
  runs: Run[];
  checks: Check[];
}
interface ContentionResult {
  summary: { total: number; allowed: number; rounds: number; drainMs: { direct: number; floor?: number; one: number; two: number; pgOne: number; pgTwo: number } };
  checks: Check[];
}
interface LedgerBackendsResult {
  results: { target: string; contention: { calls: number; drainMs: number }; throughput: { calls: number; callsPerSec: number; p50Ms: number; p99Ms: number } }[];
  checks: Check[];
}
interface AuditResult {
  summary: {
    rows: number;
    seedSeconds: number;
    rssMb: { afterStart: number; afterQueries: number; afterLoad: number; peak: number };
    labelQuery: { medianMs: number; maxMs: number; samples: number };
    filterQueries?: Record<string, { medianMs: number; maxMs: number; rows: number }>;
    labelExportJsonl: { medianMs: number; rows: number };
    load: { seconds: number; requests: number };
  };
  /** The same rows and queries on PostgreSQL, and the proxy next to them against an empty database. */
  postgres?: {
    rows: number;
    seedSeconds: number;
    labelQuery: { medianMs: number; maxMs: number; samples: number };
    filterQueries: Record<string, { medianMs: number; maxMs: number; rows: number }>;
    labelExportJsonl: { medianMs: number; rows: number };
    proxyRps: { empty: number; seeded: number };
  };
  checks: Check[];
}

const TARGET_NAMES: Record<string, string> = {
  direct: "direct (fake vendor)",
  nginx: "nginx reverse proxy",
  "http-proxy": "http-proxy on Node",
  "bun-floor": "Bun floor (Bun.serve + fetch only)",
  keybrake: "**Keybrake** (ledger + audit)",
  "keybrake-pg": "**Keybrake on PostgreSQL**, 1 replica",
  "keybrake-pg2": "**Keybrake on PostgreSQL**, 2 replicas behind nginx",
};
/** The Keybrake targets, one per backend, in the order of the side-by-side table. */
const BACKENDS: [string, string][] = [
  ["keybrake", "SQLite (one process)"],
  ["keybrake-pg", "PostgreSQL, 1 replica"],
  ["keybrake-pg2", "PostgreSQL, 2 replicas behind nginx"],
];
const SCENARIO_NAMES: Record<string, string> = {
  "fast-c1": "nginx fake vendor, 1 connection",
  "fast-c32": "nginx fake vendor, 32 connections",
  "fast-c32-idem": "nginx fake vendor, 32 connections, an Idempotency-Key per call",
  "slow50-c32": "50 ms Bun fake vendor, 32 connections",
};

const ms = (us: number) => (us / 1000).toFixed(2);
const int = (n: number) => Math.round(n).toLocaleString("en");
const ratio = (a: number, b: number) => `${(a / b).toFixed(2)}×`;

async function versions(): Promise<string> {
  const out = async (cmd: string[]) => {
    try {
      const p = Bun.spawn(cmd, { stdout: "pipe", stderr: "pipe" });
      const [a, b] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text()]);
      return (a || b).trim().split("\n")[0];
    } catch {
      return "?";
    }
  };
  const kb = keybrakeCommand();
  const kbVersion = await out([...kb.slice(0, -1), "version"]);
  return `keybrake ${kbVersion} (\`${kb.join(" ")}\`), bun ${Bun.version}, node ${await out(["node", "--version"])}, ${await out(["nginx", "-v"])}, ${await out(["wrk", "--version"])}; ${cpus().length} × ${cpus()[0]?.model ?? "cpu"}, Linux ${release()}`;
}

function loadSection(load: LoadResult): string[] {
  const lines = [
    `## Load: medians of ${load.config.rounds} interleaved round(s) (${load.config.seconds} s per run; ${load.config.slowSeconds} s on the 50 ms vendor)`,
    "",
    "| scenario | target | RPS | p50 | p99 | errors |",
    "|---|---|---:|---:|---:|---:|",
  ];
  for (const s of load.summary) {
    lines.push(`| ${SCENARIO_NAMES[s.scenario] ?? s.scenario} | ${TARGET_NAMES[s.target]} | ${int(s.rps)} | ${ms(s.p50_us)} ms | ${ms(s.p99_us)} ms | ${s.errors} |`);
  }
  const get = (sc: string, t: string) => load.summary.find((s) => s.scenario === sc && s.target === t)!;
  lines.push("", "| ratio | nginx fake, 1 conn | nginx fake, 32 conns | 50 ms fake, 32 conns |", "|---|---:|---:|---:|");
  const row = (name: string, f: (sc: string) => string) => lines.push(`| ${name} | ${["fast-c1", "fast-c32", "slow50-c32"].map(f).join(" | ")} |`);
  row("Keybrake RPS / nginx-proxy RPS", (sc) => ratio(get(sc, "keybrake").rps, get(sc, "nginx").rps));
  row("Keybrake RPS / http-proxy RPS", (sc) => ratio(get(sc, "keybrake").rps, get(sc, "http-proxy").rps));
  row("Keybrake p50 − direct p50", (sc) => `+${int(get(sc, "keybrake").p50_us - get(sc, "direct").p50_us)} µs`);
  row("nginx-proxy p50 − direct p50", (sc) => `+${int(get(sc, "nginx").p50_us - get(sc, "direct").p50_us)} µs`);
  row("http-proxy p50 − direct p50", (sc) => `+${int(get(sc, "http-proxy").p50_us - get(sc, "direct").p50_us)} µs`);
  row("Bun floor p50 − direct p50", (sc) => `+${int(get(sc, "bun-floor").p50_us - get(sc, "direct").p50_us)} µs`);
  row("Keybrake RPS / Bun floor RPS", (sc) => ratio(get(sc, "keybrake").rps, get(sc, "bun-floor").rps));
  return [...lines, "", ...backendsSection(load)];
}

/** RPS ÷ the Bun floor's RPS of the same round (only that run is comparable on a shared machine), median over rounds. */
function floorRatio(load: LoadResult, scenario: string, target: string): number {
  const mine = load.runs.filter((r) => r.round > 0 && r.scenario === scenario);
  return median(mine.filter((r) => r.target === target).map((r) => r.wrk.rps / mine.find((f) => f.round === r.round && f.target === "bun-floor")!.wrk.rps));
}

/**
 * Keybrake on each backend, side by side. The ratio to the Bun floor is taken within each round
 * (on a shared machine only the floor's run of the same round is comparable), then the median over rounds.
 */
function backendsSection(load: LoadResult): string[] {
  const lines = [
    "## Keybrake on each backend, side by side (medians over rounds)",
    "",
    "| Keybrake on | scenario | RPS | ÷ Bun floor | p50 | p99 | p99 ÷ floor's | writes per commit | writes per fsync | batched share (rollbacks) |",
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  ];
  const batching = (sc: string, t: string, f: (l: NonNullable<Run["ledger"]>) => number | null) => {
    const xs = load.runs.filter((r) => r.round > 0 && r.scenario === sc && r.target === t && r.ledger).map((r) => f(r.ledger!)).filter((x): x is number => x !== null && Number.isFinite(x));
    return xs.length ? median(xs).toFixed(1) : "–";
  };
  const batched = (sc: string, t: string) => {
    const ls = load.runs.filter((r) => r.round > 0 && r.scenario === sc && r.target === t && r.ledger?.batchedShare != null).map((r) => r.ledger!);
    if (ls.length === 0) return "–";
    return `${Math.round(100 * median(ls.map((l) => l.batchedShare!)))}% (${ls.reduce((n, l) => n + l.batchRollbacks, 0)})`;
  };
  const floorP99 = (sc: string) => load.summary.find((x) => x.scenario === sc && x.target === "bun-floor")!.p99_us;
  const sameRound = (sc: string, t: string) => floorRatio(load, sc, t);
  for (const [id, name] of BACKENDS) {
    for (const s of load.summary.filter((x) => x.target === id && x.rounds > 0)) {
      lines.push(
        `| ${name} | ${SCENARIO_NAMES[s.scenario] ?? s.scenario} | ${int(s.rps)} | ${sameRound(s.scenario, id).toFixed(2)}× | ${ms(s.p50_us)} ms | ${ms(s.p99_us)} ms | ${ratio(s.p99_us, floorP99(s.scenario))} | ${batching(s.scenario, id, (l) => l.writesPerCommit)} | ${batching(s.scenario, id, (l) => l.writesPerFsync)} | ${batched(s.scenario, id)} |`,
      );
    }
  }
  return lines;
}

function ledgerBackendsSection(l: LedgerBackendsResult): string[] {
  return [
    "## The ledger alone on each backend (admit + settle, 64 at a time per replica, no HTTP)",
    "",
    "| ledger | calls/s | p50 | p99 | contention drain |",
    "|---|---:|---:|---:|---:|",
    ...l.results.map((r) => `| ${r.target} | ${int(r.throughput.callsPerSec)} | ${r.throughput.p50Ms} ms | ${r.throughput.p99Ms} ms | ${r.contention.drainMs} ms (${r.contention.calls} calls) |`),
  ];
}

function contentionSection(c: ContentionResult): string[] {
  const s = c.summary;
  return [
    `## Contention: ${s.total} concurrent calls on one key whose cap allows ${s.allowed} (median of ${s.rounds})`,
    "",
    "| client → | drain time | vs direct |",
    "|---|---:|---:|",
    `| fake vendor directly (all ${s.total} executed) | ${s.drainMs.direct.toFixed(0)} ms | 1.00× |`,
    ...(s.drainMs.floor === undefined ? [] : [`| the Bun floor (Bun.serve + fetch, no cap: all ${s.total} forwarded) | ${s.drainMs.floor.toFixed(0)} ms | ${ratio(s.drainMs.floor, s.drainMs.direct)} |`]),
    `| one Keybrake process | ${s.drainMs.one.toFixed(0)} ms | ${ratio(s.drainMs.one, s.drainMs.direct)} |`,
    `| two Keybrake processes, one data dir | ${s.drainMs.two.toFixed(0)} ms | ${ratio(s.drainMs.two, s.drainMs.direct)} |`,
    `| Keybrake on PostgreSQL, one replica | ${s.drainMs.pgOne.toFixed(0)} ms | ${ratio(s.drainMs.pgOne, s.drainMs.direct)} |`,
    `| Keybrake on PostgreSQL, two replicas, calls alternating | ${s.drainMs.pgTwo.toFixed(0)} ms | ${ratio(s.drainMs.pgTwo, s.drainMs.direct)} |`,
  ];
}

function auditSection(a: AuditResult): string[] {
  const s = a.summary;
  return [
    `## Audit log at scale: ${int(s.rows)} rows (seeded in ${s.seedSeconds.toFixed(1)} s)`,
    "",
    "| measure | value |",
    "|---|---:|",
    `| RSS after start | ${s.rssMb.afterStart.toFixed(0)} MB |`,
    `| RSS after the audit queries | ${s.rssMb.afterQueries.toFixed(0)} MB |`,
    `| RSS after ${int(s.load.requests)} proxied calls (${s.load.seconds} s, 32 conns) | ${s.rssMb.afterLoad.toFixed(0)} MB |`,
    `| peak RSS (VmHWM) | ${s.rssMb.peak.toFixed(0)} MB |`,
    `| GET /vault/audit?label=… (first page of 100), median of ${s.labelQuery.samples} | ${s.labelQuery.medianMs.toFixed(1)} ms (max ${s.labelQuery.maxMs.toFixed(1)} ms) |`,
    `| GET /vault/audit?label=…&format=jsonl (${int(s.labelExportJsonl.rows)} rows), median of 5 | ${s.labelExportJsonl.medianMs.toFixed(1)} ms |`,
    ...Object.entries(s.filterQueries ?? {}).map(([k, v]) => `| GET /vault/audit filtered by ${k} (first page), median of ${s.labelQuery.samples} | ${v.medianMs.toFixed(1)} ms (max ${v.maxMs.toFixed(1)} ms) |`),
    ...(a.postgres ? ["", ...pgAuditSection(a.postgres)] : []),
  ];
}

function pgAuditSection(p: NonNullable<AuditResult["postgres"]>): string[] {
  return [
    `### The same on PostgreSQL: ${int(p.rows)} rows (seeded and analyzed in ${p.seedSeconds.toFixed(1)} s)`,
    "",
    "| measure | value |",
    "|---|---:|",
    `| GET /vault/audit?label=… (first page of 100), median of ${p.labelQuery.samples} | ${p.labelQuery.medianMs.toFixed(1)} ms (max ${p.labelQuery.maxMs.toFixed(1)} ms) |`,
    `| GET /vault/audit?label=…&format=jsonl (${int(p.labelExportJsonl.rows)} rows), median of 5 | ${p.labelExportJsonl.medianMs.toFixed(1)} ms |`,
    ...Object.entries(p.filterQueries).map(([k, v]) => `| GET /vault/audit filtered by ${k} (first page), median of ${p.labelQuery.samples} | ${v.medianMs.toFixed(1)} ms (max ${v.maxMs.toFixed(1)} ms) |`),
    `| proxy RPS at 32 connections, empty database → next to ${int(p.rows)} rows (median of alternating runs) | ${int(p.proxyRps.empty)} → ${int(p.proxyRps.seeded)} (${ratio(p.proxyRps.seeded, p.proxyRps.empty)}) |`,
  ];
}

interface Target {
  name: string;
  measured: string;
  met: boolean;
}

function targets(load: LoadResult | null, audit: AuditResult | null, contention: ContentionResult | null): Target[] {
  const out: Target[] = [];
  if (load) {
    const get = (sc: string, t: string) => load.summary.find((s) => s.scenario === sc && s.target === t)!;
    const kb32 = get("fast-c32", "keybrake");
    const vsNginx = kb32.rps / get("fast-c32", "nginx").rps;
    const vsNode = kb32.rps / get("fast-c32", "http-proxy").rps;
    const added = get("fast-c1", "keybrake").p50_us - get("fast-c1", "direct").p50_us;
    out.push(
      { name: "Keybrake RPS ≥ 0.35× nginx-proxy RPS (32 conns)", measured: `${vsNginx.toFixed(2)}× (${int(kb32.rps)} vs ${int(get("fast-c32", "nginx").rps)})`, met: vsNginx >= 0.35 },
      { name: "Keybrake RPS ≥ 1.5× http-proxy RPS (32 conns)", measured: `${vsNode.toFixed(2)}× (${int(kb32.rps)} vs ${int(get("fast-c32", "http-proxy").rps)})`, met: vsNode >= 1.5 },
      { name: "added p50 over direct ≤ 100 µs (1 conn)", measured: `+${int(added)} µs`, met: added <= 100 },
      { name: "p99 ≤ 5 ms (32 conns)", measured: `${ms(kb32.p99_us)} ms`, met: kb32.p99_us <= 5000 },
    );
    // Issue 15's goals, stated against the Bun floor of the same run.
    const floor1 = get("fast-c1", "bun-floor");
    const floor32 = get("fast-c32", "bun-floor");
    const vsFloor = floorRatio(load, "fast-c32", "keybrake");
    const p50Over = get("fast-c1", "keybrake").p50_us - floor1.p50_us;
    out.push(
      { name: "Keybrake RPS ≥ 0.5× the Bun floor's (32 conns)", measured: `${vsFloor.toFixed(2)}×`, met: vsFloor >= 0.5 },
      { name: "p50 within 120 µs of the Bun floor's (1 conn)", measured: `+${int(p50Over)} µs`, met: p50Over <= 120 },
      { name: "p99 ≤ 3× the Bun floor's (32 conns)", measured: ratio(kb32.p99_us, floor32.p99_us), met: kb32.p99_us <= 3 * floor32.p99_us },
    );
  }
  if (contention) {
    const d = contention.summary.drainMs;
    const floor = d.floor === undefined ? "" : ` (the Bun floor, forwarding all: ${ratio(d.floor, d.direct)})`;
    out.push({ name: `${int(contention.summary.total)}-way contention drain ≤ 1.4× direct (one process)`, measured: `${ratio(d.one, d.direct)}${floor}`, met: d.one <= 1.4 * d.direct });
  }
  if (audit) {
    const note = audit.summary.rows < 1_000_000 ? ` (only ${int(audit.summary.rows)} rows)` : "";
    out.push(
      { name: "RSS < 150 MB after 1M audit rows", measured: `peak ${audit.summary.rssMb.peak.toFixed(0)} MB${note}`, met: audit.summary.rssMb.peak < 150 },
      { name: "audit-by-label query < 50 ms", measured: `median ${audit.summary.labelQuery.medianMs.toFixed(1)} ms${note}`, met: audit.summary.labelQuery.medianMs < 50 },
    );
    const pg = audit.postgres;
    if (pg) {
      const slowest = Math.max(pg.labelQuery.medianMs, ...Object.values(pg.filterQueries).map((f) => f.medianMs));
      out.push(
        { name: "PostgreSQL: every audit filter < 50 ms", measured: `slowest median ${slowest.toFixed(1)} ms${note}`, met: slowest < 50 },
        { name: "PostgreSQL: proxy RPS next to the big log within 10% of an empty database", measured: `${ratio(pg.proxyRps.seeded, pg.proxyRps.empty)}${note}`, met: pg.proxyRps.seeded >= 0.9 * pg.proxyRps.empty },
      );
    }
  }
  return out;
}

/** The same four load measures for the Bun floor: what no Bun-based proxy can beat on this machine. */
function floorNote(load: LoadResult): string {
  const get = (sc: string, t: string) => load.summary.find((s) => s.scenario === sc && s.target === t)!;
  const floor32 = get("fast-c32", "bun-floor");
  return (
    `For reference, the Bun floor (Bun.serve + fetch, nothing else) measured ${ratio(floor32.rps, get("fast-c32", "nginx").rps)} nginx-proxy RPS, ` +
    `${ratio(floor32.rps, get("fast-c32", "http-proxy").rps)} http-proxy RPS, +${int(get("fast-c1", "bun-floor").p50_us - get("fast-c1", "direct").p50_us)} µs p50 over direct at 1 connection ` +
    `and ${ms(floor32.p99_us)} ms p99 at 32 connections.`
  );
}

async function main() {
  const load = readResult<LoadResult>("load");
  const contention = readResult<ContentionResult>("contention");
  const audit = readResult<AuditResult>("audit-scale");
  const ledgerBackends = readResult<LedgerBackendsResult>("ledger-backends");
  const lines = [`# Keybrake bench — ${new Date().toISOString()}${SMOKE ? " (smoke mode: short runs, indicative only)" : ""}`, "", await versions(), ""];
  const missing: string[] = [];
  for (const [name, part, section] of [
    ["load", load, loadSection],
    ["contention", contention, contentionSection],
    ["audit-scale", audit, auditSection],
    ["ledger-backends", ledgerBackends, ledgerBackendsSection],
  ] as const) {
    if (part) lines.push(...(section as (x: unknown) => string[])(part), "");
    else missing.push(name);
  }

  const t = targets(load, audit, contention);
  lines.push("## Targets", "", "| target | measured | |", "|---|---|---|");
  for (const x of t) lines.push(`| ${x.name} | ${x.measured} | ${x.met ? "met" : "**not met**"} |`);
  if (load) lines.push("", floorNote(load));

  const checks = [...(load?.checks ?? []), ...(contention?.checks ?? []), ...(audit?.checks ?? []), ...(ledgerBackends?.checks ?? [])];
  const failed = checks.filter((c) => !c.ok);
  lines.push("", "## Correctness checks", "", `${checks.length - failed.length}/${checks.length} PASS${failed.length ? `, ${failed.length} FAIL:` : ""}`);
  for (const c of failed) lines.push(`- FAIL ${c.name}: ${c.detail}`);
  if (missing.length) lines.push(`- FAIL no results from: ${missing.join(", ")}`);

  const md = lines.join("\n") + "\n";
  writeFileSync(join(RESULTS_DIR, "latest.md"), md);
  console.log(md);
  console.log(`(saved to ${join(RESULTS_DIR, "latest.md")})`);

  const strictFail = process.env.BENCH_STRICT === "1" && t.some((x) => !x.met);
  process.exit(failed.length || missing.length || strictFail ? 1 : 0);
}

await main();
