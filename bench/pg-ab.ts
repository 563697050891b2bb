/**
 * The proxy on PostgreSQL, before/after in ONE interleaved run: two checkouts' proxy replicas
 * (each checkout's test/pg-replica-server.ts: the real Forwarder on the PostgreSQL ledger) on one
 * throwaway cluster (test/pg.ts: loopback, fsync off), in front of the Bun fake vendor, with wrk
 * on the other core. Rounds alternate the order; every run's ledger is checked (nothing left
 * reserved once settled, spent = answers × $29 within one call per connection, no non-2xx).
 *
 *   bun bench/pg-ab.ts --before /path/to/old/checkout [--after .]
 *
 * Knobs: AB_ROUNDS (3), AB_SECONDS (4), BENCH_PORT_BASE. Results: bench/results/pg-ab.json.
 */
import { spawn } from "bun";
import { join, resolve } from "node:path";
import { migratePostgres, openPostgres } from "../src/db/pg.ts";
import { postgresAvailable, startCluster } from "../test/pg.ts";
import { median, PI_MICROS, ROOT, SERVER_CPU, startServer, STRIPE_SECRET, wrk, writeResult } from "./lib.ts";

const arg = (name: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i < 0 ? undefined : process.argv[i + 1];
};
const ROUNDS = Number(process.env.AB_ROUNDS ?? 3);
const SECONDS = Number(process.env.AB_SECONDS ?? 4);
const BASE = Number(process.env.BENCH_PORT_BASE ?? 18400) + 40;
const CONNS = [1, 32];

async function replica(checkout: string, pgUrl: string, vendor: string): Promise<{ url: string; stop(): void }> {
  const proc = spawn(["taskset", "-c", SERVER_CPU, join(ROOT, "node_modules", ".bin", "bun"), join(checkout, "test", "pg-replica-server.ts"), pgUrl, vendor, STRIPE_SECRET], { cwd: checkout, stdout: "pipe", stderr: "inherit" });
  const reader = proc.stdout.getReader();
  let out = "";
  while (!out.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`replica of ${checkout} exited before listening`);
    out += new TextDecoder().decode(value);
  }
  reader.releaseLock();
  return { url: out.trim(), stop: () => proc.kill("SIGKILL") };
}

async function main() {
  if (!postgresAvailable()) throw new Error("PostgreSQL server binaries not found");
  const checkouts = { before: resolve(arg("before") ?? ""), after: resolve(arg("after") ?? ROOT) };
  if (!arg("before")) throw new Error("usage: bun bench/pg-ab.ts --before /path/to/old/checkout [--after .]");
  const cluster = await startCluster();
  const pgUrl = cluster.createDatabase("bench");
  const sql = openPostgres(pgUrl);
  await migratePostgres(sql);
  const vendor = await startServer("fake-vendor", [join(ROOT, "node_modules", ".bin", "bun"), join(ROOT, "bench", "fake-vendor.ts"), String(BASE + 1)], BASE + 1, {}, "/__count");
  const targets = await Promise.all(Object.entries(checkouts).map(async ([id, dir]) => ({ id, ...(await replica(dir, pgUrl, vendor.url)) })));

  let seq = 0;
  const newKey = async () => {
    const id = `key_pgab_${++seq}`;
    const vaultKey = `vk_${id}_0123456789abcdef0123456789abcdef`;
    const hash = new Bun.CryptoHasher("sha256").update(vaultKey).digest("hex");
    await sql`INSERT INTO vault_keys (id, key_hash, key_hint, vendor, daily_cap_micros, allowed_endpoints, agent_run_label, expires_at, created_at)
              VALUES (${id}, ${hash}, 'vk_', 'stripe', ${1e9 * 1e6}, '["POST /v1/payment_intents"]', ${"bench/" + id}, ${Date.now() + 3600_000}, ${Date.now()})`;
    return { id, vaultKey };
  };
  /** The key's totals once nothing is reserved (settlements commit just after their answers), bounded. */
  const settled = async (keyId: string) => {
    const until = performance.now() + 10_000;
    for (;;) {
      const [r] = await sql`SELECT spent_total_micros::float8 AS spent, reserved_total_micros::float8 AS reserved FROM vault_keys WHERE id = ${keyId}`;
      if (r.reserved === 0 || performance.now() > until) return r as { spent: number; reserved: number };
      await Bun.sleep(20);
    }
  };

  const samples: { round: number; conns: number; target: string; rps: number; p50: number; p99: number; ok: boolean }[] = [];
  for (let round = 0; round <= ROUNDS; round++) {
    for (const conns of CONNS) {
      for (const t of round % 2 ? [...targets].reverse() : targets) {
        const key = await newKey();
        const w = await wrk(t.url, conns, round === 0 ? 2 : SECONDS, key.vaultKey);
        const v = await settled(key.id);
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
  for (const t of targets) t.stop();
  await vendor.stop();
  await sql.close();
  cluster.destroy();
  process.exit(failed === 0 ? 0 : 1);
}

await main();
