/**
 * Keybrake with a big audit log: RSS, and the latency of the audit-by-label query.
 *
 *  1. Start Keybrake on an empty data dir once (it applies its migrations), stop it.
 *  2. Insert BENCH_AUDIT_ROWS rows (default 1,000,000; 100,000 in smoke mode)
 *     straight into keybrake.db's audit_log with bun:sqlite, shaped like real
 *     traffic: 1,000 run labels interleaved over 30 days, 96% forwarded and
 *     settled with unique pi_… / req_… ids, 4% cap hits.
 *  3. Start Keybrake on it and measure RSS after start, the median of 20
 *     `GET /vault/audit?label=…` (a label with 1,000 rows scattered through the
 *     table, first page of 100), an export of that label as JSONL, and RSS after
 *     a short wrk load through the proxy on top of the big log.
 *
 * Results: bench/results/audit-scale.json.
 */
import { join } from "node:path";
import {
  ADMIN_TOKEN,
  AUDIT_LABELS as LABELS,
  check,
  issueKey,
  keybrakeCommand,
  keybrakeEnv,
  labelOf,
  makeTempDir,
  median,
  memoryMb,
  ROOT,
  runBounded,
  seedAuditRows,
  SMOKE,
  startServer,
  writeResult,
  type Check,
  type Server,
} from "./lib.ts";

const ROWS = Number(process.env.BENCH_AUDIT_ROWS ?? (SMOKE ? 100_000 : 1_000_000));
const QUERIES = 20;
const LOAD_SECONDS = Number(process.env.BENCH_AUDIT_LOAD_SECONDS ?? (SMOKE ? 2 : 5));
const PORT_BASE = Number(process.env.BENCH_PORT_BASE ?? 18400);

/** Client-side latency of one management API call, body fully read. */
async function timeGet(url: string): Promise<{ ms: number; status: number; body: string }> {
  const t0 = performance.now();
  const res = await fetch(url, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
  const body = await res.text();
  return { ms: performance.now() - t0, status: res.status, body };
}

interface Latency {
  medianMs: number;
  maxMs: number;
  status: number;
  bytes: number;
  /** Rows in the answer: `data` of a JSON page, lines of a JSONL export. */
  rows: number;
}

async function queryLatency(kb: Server, path: string, times: number): Promise<Latency> {
  await timeGet(kb.url + path); // warm: first call compiles the route and faults in index pages
  const samples = [];
  for (let i = 0; i < times; i++) samples.push(await timeGet(kb.url + path));
  const last = samples[samples.length - 1]!;
  let rows = last.body.split("\n").filter(Boolean).length;
  try {
    rows = (JSON.parse(last.body) as { data: unknown[] }).data.length;
  } catch {}
  return { medianMs: median(samples.map((s) => s.ms)), maxMs: Math.max(...samples.map((s) => s.ms)), status: last.status, bytes: last.body.length, rows };
}

async function proxyLoad(kb: Server, seconds: number): Promise<{ requests: number; ok2xx: number }> {
  const key = await issueKey(kb.url, 1_000_000_000, "bench/audit-scale/load");
  const cmd = ["wrk", "-t1", "-c32", `-d${seconds}s`, "-s", join(ROOT, "bench", "pi.lua"), `${kb.url}/v1/payment_intents`, "--", key.vault_key];
  const { stdout } = await runBounded(cmd, (seconds + 20) * 1000);
  const m = /requests=(\d+) ok2xx=(\d+)/.exec(stdout);
  return { requests: Number(m?.[1] ?? 0), ok2xx: Number(m?.[2] ?? 0) };
}

async function main() {
  const checks: Check[] = [];
  const dataDir = makeTempDir("keybrake-bench-audit-");
  const ports = { vendor: PORT_BASE + 21, kb: PORT_BASE + 20 };
  const servers: Server[] = [];
  try {
    const vendor = await startServer("vendor", [process.execPath, "bench/fake-vendor.ts", String(ports.vendor), "0"], ports.vendor, {}, "/__count");
    servers.push(vendor);
    const kbEnv = keybrakeEnv(ports.kb, dataDir, vendor.url);

    // 1. Let Keybrake create and migrate its database, then stop it.
    const first = await startServer("keybrake (migrate)", keybrakeCommand(), ports.kb, kbEnv, "/healthz");
    await first.stop();

    // 2. Seed.
    console.log(`audit scale: inserting ${ROWS.toLocaleString("en")} audit rows…`);
    const seedSeconds = seedAuditRows(join(dataDir, "keybrake.db"), ROWS);
    console.log(`  seeded in ${seedSeconds.toFixed(1)} s`);

    // 3. Measure.
    const kb = await startServer("keybrake", keybrakeCommand(), ports.kb, kbEnv, "/healthz");
    servers.push(kb);
    const afterStart = memoryMb(kb.pid);
    const label = encodeURIComponent(labelOf(421));
    const page = await queryLatency(kb, `/vault/audit?label=${label}`, QUERIES);
    const exportJsonl = await queryLatency(kb, `/vault/audit?label=${label}&format=jsonl`, 5);
    // The other filters of GET /vault/audit, each over the same 1M rows: a key, an outcome, one day.
    const day = new Date(Date.now() - 15 * 86_400_000);
    const since = encodeURIComponent(new Date(Date.UTC(day.getUTCFullYear(), day.getUTCMonth(), day.getUTCDate())).toISOString());
    const until = encodeURIComponent(new Date(Date.UTC(day.getUTCFullYear(), day.getUTCMonth(), day.getUTCDate() + 1)).toISOString());
    const filters = {
      key: await queryLatency(kb, `/vault/audit?key_id=key_seed0421`, QUERIES),
      outcome: await queryLatency(kb, `/vault/audit?outcome=cap_hit`, QUERIES),
      time: await queryLatency(kb, `/vault/audit?since=${since}&until=${until}`, QUERIES),
      labelAndOutcome: await queryLatency(kb, `/vault/audit?label=${label}&outcome=cap_hit`, QUERIES),
    };
    const afterQueries = memoryMb(kb.pid);
    const load = await proxyLoad(kb, LOAD_SECONDS);
    const afterLoad = memoryMb(kb.pid);

    const perLabel = Math.ceil(ROWS / LABELS);
    check(
      checks,
      "audit-by-label answers the right rows",
      page.status === 200 && page.rows === Math.min(100, perLabel) && exportJsonl.status === 200 && exportJsonl.rows === perLabel,
      `page: ${page.status}, ${page.rows} rows; JSONL export: ${exportJsonl.status}, ${exportJsonl.rows} rows (${perLabel} expected)`,
    );
    check(checks, "proxy works on the big log", load.ok2xx > 0 && load.ok2xx === load.requests, `${load.ok2xx}/${load.requests} 2xx in ${LOAD_SECONDS}s`);

    const summary = {
      rows: ROWS,
      seedSeconds,
      rssMb: { afterStart: afterStart.rss, afterQueries: afterQueries.rss, afterLoad: afterLoad.rss, peak: afterLoad.peak },
      labelQuery: { path: "/vault/audit?label=…", medianMs: page.medianMs, maxMs: page.maxMs, samples: QUERIES },
      labelExportJsonl: { medianMs: exportJsonl.medianMs, rows: exportJsonl.rows, bytes: exportJsonl.bytes, samples: 5 },
      filterQueries: Object.fromEntries(Object.entries(filters).map(([k, v]) => [k, { medianMs: v.medianMs, maxMs: v.maxMs, rows: v.rows, status: v.status }])),
      load: { seconds: LOAD_SECONDS, ...load },
    };
    console.log(
      `  RSS ${afterStart.rss.toFixed(0)} MB after start, ${afterQueries.rss.toFixed(0)} MB after queries, ${afterLoad.rss.toFixed(0)} MB after ${load.requests} proxied calls (peak ${afterLoad.peak.toFixed(0)} MB)`,
    );
    console.log(`  GET /vault/audit?label=… median ${page.medianMs.toFixed(1)} ms (max ${page.maxMs.toFixed(1)} ms, ${QUERIES} samples); JSONL export of the label ${exportJsonl.medianMs.toFixed(1)} ms`);
    console.log(`  other filters (median of ${QUERIES}): ${Object.entries(filters).map(([k, v]) => `${k} ${v.medianMs.toFixed(1)} ms (${v.rows} rows)`).join(", ")}`);
    // label 421 has no cap hits (cap hits are every 25th row): label+outcome is the no-match case, a full walk of the label.
    check(checks, "audit filters answer", Object.values(filters).every((f) => f.status === 200) && [filters.key, filters.outcome, filters.time].every((f) => f.rows === 100) && filters.labelAndOutcome.rows === 0, Object.entries(filters).map(([k, v]) => `${k}: ${v.status}, ${v.rows} rows`).join("; "));
    writeResult("audit-scale", { summary, checks });
  } finally {
    for (const s of servers.reverse()) await s.stop();
  }
  process.exit(checks.every((c) => c.ok) ? 0 : 1);
}

await main();
