/**
 * Keybrake on PostgreSQL, before/after in ONE interleaved run: each checkout's real server
 * (`bun src/main.ts serve` with KEYBRAKE_DATABASE_URL) on its own database of one throwaway
 * cluster (test/pg.ts: loopback, fsync off), in front of the Bun fake vendor, with wrk on the
 * other core. Rounds alternate the order; every run gets a fresh key from the management API and
 * its ledger is read back through it (nothing left reserved once settled, spent = answers × $29
 * within one call per connection, no non-2xx). Both checkouts must serve on PostgreSQL.
 *
 *   bun bench/pg-ab.ts --before /path/to/old/checkout [--after .]
 *
 * Knobs: AB_ROUNDS (3), AB_SECONDS (4), BENCH_PORT_BASE. Results: bench/results/pg-ab.json.
 */
import { join, resolve } from "node:path";
import { postgresAvailable, startCluster } from "../test/pg.ts";
import { issueKey, keybrakeEnv, ledgerCounters, makeTempDir, median, PG_MASTER_KEY, PI_MICROS, ROOT, settledView, startServer, usdToMicros, wrk, writeResult, type Server } from "./lib.ts";

const arg = (name: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i < 0 ? undefined : process.argv[i + 1];
};
const ROUNDS = Number(process.env.AB_ROUNDS ?? 3);
const SECONDS = Number(process.env.AB_SECONDS ?? 4);
const BASE = Number(process.env.BENCH_PORT_BASE ?? 18400) + 40;
const CONNS = [1, 32];

const BUN = join(ROOT, "node_modules", ".bin", "bun");

/** One checkout's `keybrake serve` on its own database (a checkout migrates only its own schema). */
function serve(id: string, checkout: string, port: number, databaseUrl: string, vendor: string): Promise<Server> {
  const env = { ...keybrakeEnv(port, makeTempDir(`keybrake-pg-ab-${id}-`), vendor), KEYBRAKE_DATABASE_URL: databaseUrl, KEYBRAKE_MASTER_KEY: PG_MASTER_KEY };
  return startServer(`keybrake ${id}`, [BUN, join(checkout, "src", "main.ts"), "serve"], port, env, "/healthz");
}

async function main() {
  if (!postgresAvailable()) throw new Error("PostgreSQL server binaries not found");
  const checkouts = { before: resolve(arg("before") ?? ""), after: resolve(arg("after") ?? ROOT) };
  if (!arg("before")) throw new Error("usage: bun bench/pg-ab.ts --before /path/to/old/checkout [--after .]");
  const cluster = await startCluster();
  const vendor = await startServer("fake-vendor", [BUN, join(ROOT, "bench", "fake-vendor.ts"), String(BASE + 1)], BASE + 1, {}, "/__count");
  const targets: { id: string; server: Server }[] = [];
  for (const [i, [id, dir]] of Object.entries(checkouts).entries()) {
    targets.push({ id, server: await serve(id, dir, BASE + 2 + i, cluster.createDatabase(`bench_${id}`), vendor.url) });
  }

  const samples: { round: number; conns: number; target: string; rps: number; p50: number; p99: number; ok: boolean }[] = [];
  let failed = 0; // warm-up runs included: their numbers are not counted, their ledgers are
  for (let round = 0; round <= ROUNDS; round++) {
    for (const conns of CONNS) {
      for (const t of round % 2 ? [...targets].reverse() : targets) {
        const key = await issueKey(t.server.url, 1e9, `bench/pg-ab/${t.id}/c${conns}/r${round}`);
        const counters = await ledgerCounters([t.server.url]);
        const w = await wrk(t.server.url, conns, round === 0 ? 2 : SECONDS, key.vault_key);
        const v = await settledView(t.server.url, key.key_id, 10_000);
        const after = await ledgerCounters([t.server.url]);
        const writes = after.writes - counters.writes;
        const batching = `${(writes / (after.commits - counters.commits)).toFixed(1)} writes/commit, ${Math.round((100 * (after.batched - counters.batched)) / writes)}% batched, ${after.rollbacks - counters.rollbacks} rollbacks`;
        const calls = usdToMicros(v.spent_total_usd) / PI_MICROS;
        const ok = w.non2xx === 0 && w.errors === 0 && v.reserved_usd === 0 && calls >= w.ok2xx && calls <= w.ok2xx + conns;
        if (!ok) {
          failed++;
          console.error(`LEDGER FAIL ${t.id} c${conns} r${round}: reserved $${v.reserved_usd}, spent calls ${calls}, wrk 2xx ${w.ok2xx}, non2xx ${w.non2xx}, errors ${w.errors}`);
        }
        if (round > 0) samples.push({ round, conns, target: t.id, rps: w.rps, p50: w.p50, p99: w.p99, ok });
        console.log(`r${round} c${conns} ${t.id.padEnd(7)} ${w.rps.toFixed(0).padStart(6)} rps  p50 ${w.p50} µs  p99 ${w.p99} µs  ${batching}${ok ? "" : "  FAIL"}`);
      }
    }
  }
  writeResult("pg-ab", { rounds: ROUNDS, seconds: SECONDS, samples });
  const lines = ["| PostgreSQL proxy | conns | RPS (median, min–max) | p50 µs | p99 µs |", "|---|---:|---:|---:|---:|"];
  for (const conns of CONNS) {
    for (const t of targets) {
      const mine = samples.filter((s) => s.conns === conns && s.target === t.id);
      const rps = mine.map((s) => s.rps);
      lines.push(`| ${t.id} | ${conns} | ${median(rps).toFixed(0)} (${Math.min(...rps).toFixed(0)}–${Math.max(...rps).toFixed(0)}) | ${median(mine.map((s) => s.p50))} | ${median(mine.map((s) => s.p99))} |`);
    }
  }
  lines.push("", `ledger checks: ${failed === 0 ? "PASS" : `FAIL (${failed} runs)`}`);
  console.log("\n" + lines.join("\n"));
  for (const t of targets) await t.server.stop();
  await vendor.stop();
  cluster.destroy();
  process.exit(failed === 0 ? 0 : 1);
}

await main();
