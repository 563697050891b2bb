/**
 * The proxy on PostgreSQL, before/after in ONE interleaved run: two checkouts' replicas (each
 * checkout's own `src/main.ts serve` with KEYBRAKE_DATABASE_URL) on one database of a throwaway
 * cluster (test/pg.ts: loopback, fsync off), in front of the Bun fake vendor, with wrk on the other
 * core. Keys are issued through the "after" replica's API and used on both, so `--before` must be a
 * checkout that runs every store on PostgreSQL (7f4bd12 or later). Rounds alternate the order;
 * every run's ledger is checked (nothing left reserved once settled, spent = answers × $29 within
 * one call per connection, no non-2xx).
 *
 *   bun bench/pg-ab.ts --before /path/to/old/checkout [--after .]
 *
 * Knobs: AB_ROUNDS (3), AB_SECONDS (4), BENCH_PORT_BASE. Results: bench/results/pg-ab.json.
 */
import { join, resolve } from "node:path";
import { postgresAvailable, startCluster } from "../test/pg.ts";
import { issueKey, keybrakeEnv, type Server, makeTempDir, median, PI_MICROS, ROOT, settledView, startServer, usdToMicros, wrk, writeResult } from "./lib.ts";

const arg = (name: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i < 0 ? undefined : process.argv[i + 1];
};
const ROUNDS = Number(process.env.AB_ROUNDS ?? 3);
const SECONDS = Number(process.env.AB_SECONDS ?? 4);
const BASE = Number(process.env.BENCH_PORT_BASE ?? 18400) + 40;
const CONNS = [1, 32];

const MASTER_KEY = "kbm_bench_master_key_0123456789abcdef0123456789";

/** One replica: `checkout`'s own server on the shared database, as a deployment starts it. */
function replica(id: string, checkout: string, pgUrl: string, vendor: string, port: number) {
  const env = { ...keybrakeEnv(port, makeTempDir(`keybrake-pgab-${id}-`), vendor), KEYBRAKE_DATABASE_URL: pgUrl, KEYBRAKE_MASTER_KEY: MASTER_KEY };
  return startServer(`keybrake (${id})`, [join(ROOT, "node_modules", ".bin", "bun"), join(checkout, "src", "main.ts"), "serve"], port, env, "/healthz");
}

async function main() {
  if (!postgresAvailable()) throw new Error("PostgreSQL server binaries not found");
  const checkouts = { before: resolve(arg("before") ?? ""), after: resolve(arg("after") ?? ROOT) };
  if (!arg("before")) throw new Error("usage: bun bench/pg-ab.ts --before /path/to/old/checkout [--after .]");
  const cluster = await startCluster();
  const pgUrl = cluster.createDatabase("bench");
  const vendor = await startServer("fake-vendor", [join(ROOT, "node_modules", ".bin", "bun"), join(ROOT, "bench", "fake-vendor.ts"), String(BASE + 1)], BASE + 1, {}, "/__count");
  // One after the other: each applies the migrations it embeds at start.
  const targets: (Server & { id: string })[] = [];
  for (const [i, [id, dir]] of Object.entries(checkouts).entries()) targets.push(Object.assign(await replica(id, dir, pgUrl, vendor.url, BASE + 2 + i), { id }));
  const issuer = targets.find((t) => t.id === "after")!;

  let seq = 0;
  const newKey = () => issueKey(issuer.url, 1e9, `bench/pg-ab-${++seq}`);
  /** The key's totals once nothing is reserved (settlements commit just after their answers), bounded. */
  const settled = async (keyId: string) => {
    const v = await settledView(issuer.url, keyId, 10_000);
    return { spent: usdToMicros(v.spent_total_usd), reserved: usdToMicros(v.reserved_usd) };
  };

  const samples: { round: number; conns: number; target: string; rps: number; p50: number; p99: number; ok: boolean }[] = [];
  for (let round = 0; round <= ROUNDS; round++) {
    for (const conns of CONNS) {
      for (const t of round % 2 ? [...targets].reverse() : targets) {
        const key = await newKey();
        const w = await wrk(t.url, conns, round === 0 ? 2 : SECONDS, key.vault_key);
        const v = await settled(key.key_id);
        const calls = v.spent / PI_MICROS;
        const ok = w.non2xx === 0 && w.errors === 0 && v.reserved === 0 && calls >= w.ok2xx && calls <= w.ok2xx + conns;
        if (!ok) console.error(`LEDGER FAIL ${t.id} c${conns} r${round}: reserved ${v.reserved}, spent calls ${calls}, wrk 2xx ${w.ok2xx}, non2xx ${w.non2xx}, errors ${w.errors}`);
        if (round > 0) samples.push({ round, conns, target: t.id, rps: w.rps, p50: w.p50, p99: w.p99, ok });
        console.log(`r${round} c${conns} ${t.id.padEnd(7)} ${w.rps.toFixed(0).padStart(6)} rps  p50 ${w.p50} µs  p99 ${w.p99} µs${ok ? "" : "  FAIL"}`);
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
  const failed = samples.filter((s) => !s.ok).length;
  lines.push("", `ledger checks: ${failed === 0 ? "PASS" : `FAIL (${failed} runs)`}`);
  console.log("\n" + lines.join("\n"));
  for (const t of targets) await t.stop();
  await vendor.stop();
  cluster.destroy();
  process.exit(failed === 0 ? 0 : 1);
}

await main();
