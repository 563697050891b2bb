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
 * Then the same on PostgreSQL: the same rows seeded into a database (one INSERT … SELECT, then
 * VACUUM ANALYZE, as autovacuum would have left a month-old log), the same queries through a
 * Keybrake replica on it, and the proxy's throughput on that database against a replica on an
 * empty one, in alternating runs: a call's cost must not grow with the history next to it.
 *
 * Results: bench/results/audit-scale.json.
 */
import { join } from "node:path";
import { startCluster } from "../test/pg.ts";
import { openPostgres } from "../src/db/pg.ts";
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
  PG_MASTER_KEY,
  seedAuditRows,
  SMOKE,
  startServer,
  wrk,
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

async function proxyLoad(kb: Server, seconds: number): Promise<{ requests: number; ok2xx: number; rps: number }> {
  const key = await issueKey(kb.url, 1_000_000_000, "bench/audit-scale/load");
  const { requests, ok2xx, rps } = await wrk(kb.url, 32, seconds, key.vault_key, "pi.lua");
  return { requests, ok2xx, rps };
}

/** The audit API's filters, each over the same big log: a label's first page and its export, a key, an outcome, one day, a label with no match. */
async function auditQueries(kb: Server) {
  const label = encodeURIComponent(labelOf(421));
  const page = await queryLatency(kb, `/vault/audit?label=${label}`, QUERIES);
  const exportJsonl = await queryLatency(kb, `/vault/audit?label=${label}&format=jsonl`, 5);
  const day = new Date(Date.now() - 15 * 86_400_000);
  const since = encodeURIComponent(new Date(Date.UTC(day.getUTCFullYear(), day.getUTCMonth(), day.getUTCDate())).toISOString());
  const until = encodeURIComponent(new Date(Date.UTC(day.getUTCFullYear(), day.getUTCMonth(), day.getUTCDate() + 1)).toISOString());
  const filters = {
    key: await queryLatency(kb, `/vault/audit?key_id=key_seed0421`, QUERIES),
    outcome: await queryLatency(kb, `/vault/audit?outcome=cap_hit`, QUERIES),
    time: await queryLatency(kb, `/vault/audit?since=${since}&until=${until}`, QUERIES),
    labelAndOutcome: await queryLatency(kb, `/vault/audit?label=${label}&outcome=cap_hit`, QUERIES),
  };
  return { page, exportJsonl, filters };
}

/** Checks that the queries answered the seeded rows (the same on both backends). */
function checkQueries(checks: Check[], backend: string, q: Awaited<ReturnType<typeof auditQueries>>): void {
  const perLabel = Math.ceil(ROWS / LABELS);
  const { page, exportJsonl, filters } = q;
  check(
    checks,
    `${backend}: audit-by-label answers the right rows`,
    page.status === 200 && page.rows === Math.min(100, perLabel) && exportJsonl.status === 200 && exportJsonl.rows === perLabel,
    `page: ${page.status}, ${page.rows} rows; JSONL export: ${exportJsonl.status}, ${exportJsonl.rows} rows (${perLabel} expected)`,
  );
  // label 421 has no cap hits (cap hits are every 25th row): label+outcome is the no-match case, a full walk of the label.
  check(
    checks,
    `${backend}: audit filters answer`,
    Object.values(filters).every((f) => f.status === 200) && [filters.key, filters.outcome, filters.time].every((f) => f.rows === 100) && filters.labelAndOutcome.rows === 0,
    Object.entries(filters).map(([k, v]) => `${k}: ${v.status}, ${v.rows} rows`).join("; "),
  );
}

const summarise = (q: Awaited<ReturnType<typeof auditQueries>>) => ({
  labelQuery: { path: "/vault/audit?label=…", medianMs: q.page.medianMs, maxMs: q.page.maxMs, samples: QUERIES },
  labelExportJsonl: { medianMs: q.exportJsonl.medianMs, rows: q.exportJsonl.rows, bytes: q.exportJsonl.bytes, samples: 5 },
  filterQueries: Object.fromEntries(Object.entries(q.filters).map(([k, v]) => [k, { medianMs: v.medianMs, maxMs: v.maxMs, rows: v.rows, status: v.status }])),
});

/** The seeded rows of seedAuditRows (bench/lib.ts), in one statement: same labels, keys, outcomes, days and unique ids. */
const PG_SEED = (rows: number) => `
  INSERT INTO audit_log (ts, key_id, agent_run_label, vendor, method, path, outcome, error_code, vendor_status, estimated_micros, settled_micros,
                         ledger_state, spend_day, vendor_request_id, vendor_object_id, idempotency_key, latency_ms, replay_of)
  SELECT ts, 'key_seed' || lpad((g % ${LABELS})::text, 4, '0'), 'airflow-billing/scheduled__2026-10-01#' || lpad((g % ${LABELS})::text, 4, '0'),
         'stripe', 'POST', '/v1/payment_intents',
         CASE WHEN g % 25 = 0 THEN 'cap_hit' ELSE 'forwarded' END, CASE WHEN g % 25 = 0 THEN 'cap_exceeded' END,
         CASE WHEN g % 25 = 0 THEN NULL ELSE 200 END, 29000000, CASE WHEN g % 25 = 0 THEN NULL ELSE 29000000 END,
         CASE WHEN g % 25 = 0 THEN 'none' ELSE 'settled' END, to_char(to_timestamp(ts / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD'),
         CASE WHEN g % 25 = 0 THEN NULL ELSE 'req_' || left(md5(g::text), 24) END, CASE WHEN g % 25 = 0 THEN NULL ELSE 'pi_' || left(md5(g::text), 24) END,
         NULL, CASE WHEN g % 25 = 0 THEN 0.05 ELSE 180 + g % 97 END, NULL
    FROM (SELECT g, (${Date.now() - 30 * 86_400_000} + g::float8 * ${(30 * 86_400_000) / rows})::bigint AS ts FROM generate_series(0, ${rows - 1}) g) s`;

/** PostgreSQL: the same queries on the same rows, and the proxy on the seeded database against an empty one. */
async function postgresPart(checks: Check[], vendorUrl: string, servers: Server[]) {
  const cluster = await startCluster();
  const env = (port: number, databaseUrl: string) => ({ ...keybrakeEnv(port, makeTempDir("keybrake-bench-audit-pg-"), vendorUrl), KEYBRAKE_DATABASE_URL: databaseUrl, KEYBRAKE_MASTER_KEY: PG_MASTER_KEY });
  const urls = { empty: cluster.createDatabase("audit_empty"), seeded: cluster.createDatabase("audit_seeded") };
  const ports = { empty: PORT_BASE + 26, seeded: PORT_BASE + 27 };
  const empty = await startServer("keybrake-pg (empty)", keybrakeCommand(), ports.empty, env(ports.empty, urls.empty), "/healthz");
  servers.push(empty);
  const seeder = await startServer("keybrake-pg (migrate)", keybrakeCommand(), ports.seeded, env(ports.seeded, urls.seeded), "/healthz");
  await seeder.stop();
  console.log(`audit scale on PostgreSQL: inserting ${ROWS.toLocaleString("en")} audit rows…`);
  const t0 = performance.now();
  const sql = openPostgres(urls.seeded, { max: 1 });
  await sql.unsafe(PG_SEED(ROWS));
  await sql.unsafe("VACUUM ANALYZE audit_log");
  await sql.close();
  const seedSeconds = (performance.now() - t0) / 1000;
  console.log(`  seeded in ${seedSeconds.toFixed(1)} s`);
  const seeded = await startServer("keybrake-pg (seeded)", keybrakeCommand(), ports.seeded, env(ports.seeded, urls.seeded), "/healthz");
  servers.push(seeded);

  const q = await auditQueries(seeded);
  checkQueries(checks, "PostgreSQL", q);
  // Alternating runs, so both databases see the same machine; every call of every run must succeed.
  const runs: { empty: number[]; seeded: number[] } = { empty: [], seeded: [] };
  for (let round = 0; round < (SMOKE ? 1 : 3); round++) {
    for (const [name, kb] of (round % 2 ? [["seeded", seeded], ["empty", empty]] : [["empty", empty], ["seeded", seeded]]) as ["empty" | "seeded", Server][]) {
      const load = await proxyLoad(kb, LOAD_SECONDS);
      check(checks, `PostgreSQL ${name} database, round ${round + 1}: every proxied call answered 2xx`, load.ok2xx > 0 && load.ok2xx === load.requests, `${load.ok2xx}/${load.requests} 2xx`);
      runs[name].push(load.rps);
    }
  }
  console.log(`  GET /vault/audit?label=… median ${q.page.medianMs.toFixed(1)} ms; other filters: ${Object.entries(q.filters).map(([k, v]) => `${k} ${v.medianMs.toFixed(1)} ms`).join(", ")}`);
  console.log(`  proxy at 32 connections: ${median(runs.empty).toFixed(0)} RPS on an empty database, ${median(runs.seeded).toFixed(0)} RPS next to ${ROWS.toLocaleString("en")} rows`);
  await seeded.stop();
  await empty.stop();
  cluster.destroy();
  return { rows: ROWS, seedSeconds, ...summarise(q), proxyRps: { empty: median(runs.empty), seeded: median(runs.seeded), runs } };
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
    const q = await auditQueries(kb);
    const afterQueries = memoryMb(kb.pid);
    const load = await proxyLoad(kb, LOAD_SECONDS);
    const afterLoad = memoryMb(kb.pid);

    checkQueries(checks, "SQLite", q);
    check(checks, "proxy works on the big log", load.ok2xx > 0 && load.ok2xx === load.requests, `${load.ok2xx}/${load.requests} 2xx in ${LOAD_SECONDS}s`);

    const summary = {
      rows: ROWS,
      seedSeconds,
      rssMb: { afterStart: afterStart.rss, afterQueries: afterQueries.rss, afterLoad: afterLoad.rss, peak: afterLoad.peak },
      ...summarise(q),
      load: { seconds: LOAD_SECONDS, ...load },
    };
    console.log(
      `  RSS ${afterStart.rss.toFixed(0)} MB after start, ${afterQueries.rss.toFixed(0)} MB after queries, ${afterLoad.rss.toFixed(0)} MB after ${load.requests} proxied calls (peak ${afterLoad.peak.toFixed(0)} MB)`,
    );
    console.log(`  GET /vault/audit?label=… median ${q.page.medianMs.toFixed(1)} ms (max ${q.page.maxMs.toFixed(1)} ms, ${QUERIES} samples); JSONL export of the label ${q.exportJsonl.medianMs.toFixed(1)} ms`);
    console.log(`  other filters (median of ${QUERIES}): ${Object.entries(q.filters).map(([k, v]) => `${k} ${v.medianMs.toFixed(1)} ms (${v.rows} rows)`).join(", ")}`);
    await kb.stop();
    const postgres = await postgresPart(checks, vendor.url, servers);
    writeResult("audit-scale", { summary, postgres, checks });
  } finally {
    for (const s of servers.reverse()) await s.stop();
  }
  process.exit(checks.every((c) => c.ok) ? 0 : 1);
}

await main();
