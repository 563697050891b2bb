/**
 * The ledger on each backend, side by side (SPEC §8): the embedded SQLite file (one process) and
 * PostgreSQL with 1 and 2 replica processes on one database. Each run admits and settles $1
 * charges on one key through the ledger interface the proxy uses (no HTTP, so the numbers are the
 * ledger's own), then checks the ledger as bench/contention.ts does:
 *  - contention: CONTENTION_CALLS charges, 64 at a time per replica, on a cap of CONTENTION_ALLOWED:
 *    exactly that many admitted, spent = cap, nothing reserved, one audit row per call;
 *  - throughput: THROUGHPUT_CALLS charges on a cap they all fit in: calls/s and p50/p99 of
 *    admit + settle, then the same ledger checks.
 * PostgreSQL is a throwaway cluster (test/pg.ts: initdb in a temp dir, loopback, fsync off — the
 * numbers are the protocol's and the locks', not a disk's). Results: bench/results/ledger-backends.json.
 */
import { Database } from "bun:sqlite";
import { spawn } from "bun";
import { join } from "node:path";
import { migratePostgres, openPostgres } from "../src/db/pg.ts";
import { openDatabase } from "../src/db/connection.ts";
import { postgresAvailable, startCluster } from "../test/pg.ts";
import { check, makeTempDir, SMOKE, writeResult, type Check } from "./lib.ts";

const USD = 1_000_000;
const CONTENTION_CALLS = SMOKE ? 300 : 1000;
const CONTENTION_ALLOWED = 100;
const THROUGHPUT_CALLS = SMOKE ? 1000 : 5000;
const CONCURRENCY = 64;
const WORKER = join(import.meta.dir, "ledger-worker.ts");

interface Target {
  name: string;
  backend: "sqlite" | "pg";
  replicas: number;
  /** Creates a key with this daily cap and returns [where the workers connect, key id, a ledger reader]. */
  newKey(capUsd: number): Promise<{ target: string; keyId: string; read: () => Promise<{ spent: number; reserved: number; rows: number; settled: number }> }>;
}

let seq = 0;
const keySql = (id: string) => [`key_bench_${id}`, new Bun.CryptoHasher("sha256").update(`vk_${id}`).digest("hex")] as const;

function sqliteTarget(): Target {
  const dir = makeTempDir("keybrake-ledger-bench-");
  const db = openDatabase(dir);
  return {
    name: "sqlite ×1",
    backend: "sqlite",
    replicas: 1,
    async newKey(capUsd) {
      const [id, hash] = keySql(String(++seq));
      db.sqlite.query(`INSERT INTO vault_keys (id, key_hash, key_hint, vendor, daily_cap_micros, allowed_endpoints, agent_run_label, expires_at, created_at)
                        VALUES (?, ?, 'vk_', 'stripe', ?, '[]', 'bench', ?, ?)`).run(id, hash, capUsd * USD, Date.now() + 3600_000, Date.now());
      return {
        target: dir,
        keyId: id,
        read: async () => {
          const ro = new Database(join(dir, "keybrake.db"), { readonly: true });
          const d = ro.query(`SELECT spent_micros AS spent, reserved_micros AS reserved FROM key_spend_days WHERE key_id = ?`).get(id) as { spent: number; reserved: number } | null;
          const a = ro.query(`SELECT count(*) AS rows, sum(ledger_state = 'settled') AS settled FROM audit_log WHERE key_id = ?`).get(id) as { rows: number; settled: number };
          ro.close();
          return { spent: d?.spent ?? 0, reserved: d?.reserved ?? 0, rows: a.rows, settled: a.settled ?? 0 };
        },
      };
    },
  };
}

async function pgTargets(): Promise<{ targets: Target[]; stop: () => void }> {
  const cluster = await startCluster();
  const url = cluster.createDatabase("bench");
  const sql = openPostgres(url);
  await migratePostgres(sql);
  const make = (replicas: number): Target => ({
    name: `postgres ×${replicas}`,
    backend: "pg",
    replicas,
    async newKey(capUsd) {
      const [id, hash] = keySql(`${replicas}_${++seq}`);
      await sql`INSERT INTO vault_keys (id, key_hash, key_hint, vendor, daily_cap_micros, allowed_endpoints, agent_run_label, expires_at, created_at)
                VALUES (${id}, ${hash}, 'vk_', 'stripe', ${capUsd * USD}, '[]', 'bench', ${Date.now() + 3600_000}, ${Date.now()})`;
      return {
        target: url,
        keyId: id,
        read: async () => {
          const [d] = await sql`SELECT spent_micros::float8 AS spent, reserved_micros::float8 AS reserved FROM key_spend_days WHERE key_id = ${id}`;
          const [a] = await sql`SELECT count(*)::int AS rows, count(*) FILTER (WHERE ledger_state = 'settled')::int AS settled FROM audit_log WHERE key_id = ${id}`;
          return { spent: d?.spent ?? 0, reserved: d?.reserved ?? 0, rows: a.rows, settled: a.settled };
        },
      };
    },
  });
  return { targets: [make(1), make(2)], stop: () => void sql.close().then(() => cluster.destroy()) };
}

async function run(t: Target, capUsd: number, calls: number) {
  const k = await t.newKey(capUsd);
  const share = Math.ceil(calls / t.replicas);
  const procs = Array.from({ length: t.replicas }, (_, i) =>
    spawn([process.execPath, WORKER, t.backend, k.target, k.keyId, String(Math.min(share, calls - i * share)), String(CONCURRENCY)], { stdout: "pipe", stderr: "inherit" }),
  );
  const started = performance.now();
  const outs = await Promise.all(procs.map(async (p) => ((await p.exited) === 0 ? JSON.parse(await new Response(p.stdout).text()) : null)));
  const wallMs = performance.now() - started;
  if (outs.some((o) => o === null)) throw new Error(`${t.name}: a replica failed`);
  const tally: Record<string, number> = {};
  const lat: number[] = [];
  let busyMs = 0;
  for (const o of outs) {
    for (const [kind, n] of Object.entries(o.tally as Record<string, number>)) tally[kind] = (tally[kind] ?? 0) + n;
    lat.push(...(o.latencies as number[]));
    busyMs = Math.max(busyMs, o.ms);
  }
  lat.sort((a, b) => a - b);
  const pct = (p: number) => Math.round(lat[Math.min(lat.length - 1, Math.floor((p / 100) * lat.length))]! * 1000) / 1000;
  return { tally, wallMs, busyMs, p50: pct(50), p99: pct(99), ledger: await k.read(), capUsd };
}

const checks: Check[] = [];
const results: Record<string, unknown>[] = [];
const pg = postgresAvailable() ? await pgTargets() : null;
if (!pg) console.log("  (PostgreSQL server binaries not found: only SQLite is measured; apt-get install postgresql)");
try {
  for (const t of [sqliteTarget(), ...(pg?.targets ?? [])]) {
    const c = await run(t, CONTENTION_ALLOWED, CONTENTION_CALLS);
    check(checks, `${t.name} contention: exactly the cap admitted`, c.tally.reserved === CONTENTION_ALLOWED && c.tally.cap_hit === CONTENTION_CALLS - CONTENTION_ALLOWED, JSON.stringify(c.tally));
    check(checks, `${t.name} contention: spent = cap, nothing reserved, one audit row per call`, c.ledger.spent === CONTENTION_ALLOWED * USD && c.ledger.reserved === 0 && c.ledger.rows === CONTENTION_CALLS, JSON.stringify(c.ledger));
    const th = await run(t, THROUGHPUT_CALLS + 1, THROUGHPUT_CALLS);
    check(checks, `${t.name} throughput: every call admitted and settled, nothing reserved`, th.tally.reserved === THROUGHPUT_CALLS && th.ledger.spent === THROUGHPUT_CALLS * USD && th.ledger.reserved === 0 && th.ledger.settled === THROUGHPUT_CALLS, JSON.stringify(th.ledger));
    const callsPerSec = Math.round(THROUGHPUT_CALLS / (th.busyMs / 1000));
    console.log(`  ${t.name.padEnd(12)} contention drain ${Math.round(c.wallMs)} ms (${CONTENTION_CALLS} calls) · throughput ${callsPerSec} calls/s · admit+settle p50 ${th.p50} ms p99 ${th.p99} ms`);
    results.push({ target: t.name, replicas: t.replicas, contention: { calls: CONTENTION_CALLS, drainMs: Math.round(c.wallMs), tally: c.tally, ledger: c.ledger }, throughput: { calls: THROUGHPUT_CALLS, callsPerSec, p50Ms: th.p50, p99Ms: th.p99, ledger: th.ledger } });
  }
} finally {
  pg?.stop();
}
writeResult("ledger-backends", { results, checks });
if (checks.some((c) => !c.ok)) process.exit(1);
