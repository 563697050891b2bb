/**
 * Contention on one cap: 1,000 concurrent $29 PaymentIntents on one vault key
 * whose daily cap is exactly N × $29. Exactly N may reach the vendor; the rest
 * must get 429 with X-Keybrake-Cap-Hit, and the ledger must show N × $29 spent,
 * nothing reserved, one audit row per call.
 *
 * Measured: drain time (first send → last answer) through Keybrake, compared
 * with the same client sending the same 1,000 calls straight to the vendor;
 * and through the Bun floor (bench/bun-proxy.ts: Bun.serve + fetch, no cap, so all of them are
 * forwarded): what the runtime alone costs to pass the burst on.
 * Keybrake runs once with one process and once with two on one data dir (requests
 * alternate between them, so the cap is enforced across processes by SQLite),
 * then the same on PostgreSQL: one replica, and two replicas on one database
 * (a throwaway cluster, test/pg.ts) with the calls alternating between them.
 *
 * The vendor is bench/fake-vendor.ts (Bun, no delay), which counts what it
 * executes. Servers are pinned to the server core; this client runs on the
 * load core (run.sh starts it with taskset). Results: bench/results/contention.json.
 */
import { startCluster } from "../test/pg.ts";
import {
  auditCounts,
  check,
  issueKey,
  keybrakeCommand,
  keybrakeEnv,
  makeTempDir,
  median,
  PG_MASTER_KEY,
  pgAuditCounts,
  PI_MICROS,
  settledView,
  SMOKE,
  startServer,
  usdToMicros,
  writeResult,
  type AuditCounts,
  type Check,
  type Server,
} from "./lib.ts";

const TOTAL = Number(process.env.BENCH_CONTENTION_CALLS ?? 1000);
const ALLOWED = Number(process.env.BENCH_CONTENTION_ALLOWED ?? 100);
const ROUNDS = Number(process.env.BENCH_CONTENTION_ROUNDS ?? (SMOKE ? 1 : 3));
const PORT_BASE = Number(process.env.BENCH_PORT_BASE ?? 18400);

interface Burst {
  mode: "direct" | "bun-floor" | "keybrake×1" | "keybrake×2" | "pg×1" | "pg×2";
  round: number;
  drainMs: number;
  statuses: Record<string, number>;
  atVendor: number;
}

/** Fires every call at once and waits for the last answer (bounded by fetch's own timeout). */
async function burst(urls: string[], vaultKey: string): Promise<{ drainMs: number; statuses: number[]; capHitHeaders: number }> {
  const body = "amount=2900&currency=usd";
  const t0 = performance.now();
  const results = await Promise.all(
    Array.from({ length: TOTAL }, async (_, i) => {
      try {
        const res = await fetch(`${urls[i % urls.length]}/v1/payment_intents`, {
          method: "POST",
          headers: { authorization: `Bearer ${vaultKey}`, "content-type": "application/x-www-form-urlencoded" },
          body,
          signal: AbortSignal.timeout(30_000),
        });
        await res.arrayBuffer();
        return { status: res.status, capHit: res.headers.get("x-keybrake-cap-hit") === "true" };
      } catch {
        return { status: 0, capHit: false }; // 0 = no answer (connection error or timeout)
      }
    }),
  );
  return { drainMs: performance.now() - t0, statuses: results.map((r) => r.status), capHitHeaders: results.filter((r) => r.capHit).length };
}

const tally = (statuses: number[]) => statuses.reduce<Record<string, number>>((m, s) => ((m[s] = (m[s] ?? 0) + 1), m), {});

async function vendorCount(vendor: Server): Promise<number> {
  return ((await (await fetch(`${vendor.url}/__count`)).json()) as { count: number }).count;
}

async function resetVendor(vendor: Server): Promise<void> {
  await (await fetch(`${vendor.url}/__reset`, { method: "POST" })).arrayBuffer();
}

/** No cap in the way (the vendor itself, or the Bun floor in front of it): every call must reach the vendor and answer 200. */
async function uncappedBurst(mode: "direct" | "bun-floor", url: string, vendor: Server, round: number, checks: Check[]): Promise<Burst> {
  await resetVendor(vendor);
  const b = await burst([url], "vk_unused");
  const atVendor = await vendorCount(vendor);
  const statuses = tally(b.statuses);
  check(checks, `${mode} round ${round}: all ${TOTAL} reached the vendor and answered 200`, statuses["200"] === TOTAL && atVendor === TOTAL, `${JSON.stringify(statuses)}, ${atVendor} at the vendor`);
  return { mode, round, drainMs: b.drainMs, statuses, atVendor };
}

async function cappedBurst(mode: Burst["mode"], keybrakes: Server[], auditOf: (keyId: string) => Promise<AuditCounts>, vendor: Server, round: number, checks: Check[]): Promise<Burst> {
  const key = await issueKey(keybrakes[0]!.url, (ALLOWED * PI_MICROS) / 1e6, `bench/contention/${mode}/round-${round}`);
  await resetVendor(vendor);
  const b = await burst(
    keybrakes.map((k) => k.url),
    key.vault_key,
  );
  const atVendor = await vendorCount(vendor);
  const view = await settledView(keybrakes[keybrakes.length - 1]!.url, key.key_id);
  const audit = await auditOf(key.key_id);
  const statuses = tally(b.statuses);
  const what = `${mode} round ${round}`;
  const refused = TOTAL - ALLOWED;
  check(checks, `${what}: exactly ${ALLOWED} forwarded`, atVendor === ALLOWED && statuses["200"] === ALLOWED, `${atVendor} at the vendor, ${statuses["200"] ?? 0} × 200`);
  check(
    checks,
    `${what}: the other ${refused} refused with 429 + X-Keybrake-Cap-Hit`,
    statuses["429"] === refused && b.capHitHeaders === refused,
    `${JSON.stringify(statuses)}, ${b.capHitHeaders} with X-Keybrake-Cap-Hit: true`,
  );
  check(
    checks,
    `${what}: spent = cap, nothing reserved`,
    usdToMicros(view.spent_total_usd) === ALLOWED * PI_MICROS && view.reserved_usd === 0,
    `spent $${view.spent_total_usd}, reserved $${view.reserved_usd}`,
  );
  check(
    checks,
    `${what}: one audit row per call`,
    audit.rows === TOTAL && audit.forwarded === ALLOWED && audit.settled === ALLOWED && audit.capHit === refused,
    `${audit.rows} rows: ${audit.forwarded} forwarded (${audit.settled} settled), ${audit.capHit} cap_hit`,
  );
  return { mode, round, drainMs: b.drainMs, statuses, atVendor };
}

async function main() {
  const checks: Check[] = [];
  const bursts: Burst[] = [];
  const dataDir = makeTempDir("keybrake-bench-contention-");
  const servers: Server[] = [];
  const ports = { vendor: PORT_BASE + 10, a: PORT_BASE + 11, b: PORT_BASE + 12, pgA: PORT_BASE + 13, floor: PORT_BASE + 28, pgB: PORT_BASE + 19 };
  const sqliteAudit = async (keyId: string) => auditCounts(dataDir, keyId);
  const log = (x: Burst) => console.log(`[${x.mode} round ${x.round}] drain ${x.drainMs.toFixed(0)} ms, ${JSON.stringify(x.statuses)}, ${x.atVendor} at the vendor`);
  try {
    const vendor = await startServer("counting-vendor", [process.execPath, "bench/fake-vendor.ts", String(ports.vendor), "0"], ports.vendor, {}, "/__count");
    servers.push(vendor);
    const floor = await startServer("bun-floor", [process.execPath, "bench/bun-proxy.ts", String(ports.floor), vendor.url], ports.floor, {}, "/__count");
    servers.push(floor);
    const a = await startServer("keybrake-a", keybrakeCommand(), ports.a, keybrakeEnv(ports.a, dataDir, vendor.url), "/healthz");
    servers.push(a);
    console.log(`contention: ${TOTAL} concurrent calls, cap allows ${ALLOWED}; ${ROUNDS} round(s)`);

    for (let round = 1; round <= ROUNDS; round++) {
      for (const run of [() => uncappedBurst("direct", vendor.url, vendor, round, checks), () => uncappedBurst("bun-floor", floor.url, vendor, round, checks), () => cappedBurst("keybrake×1", [a], sqliteAudit, vendor, round, checks)]) {
        const x = await run();
        bursts.push(x);
        log(x);
      }
    }
    const b = await startServer("keybrake-b", keybrakeCommand(), ports.b, keybrakeEnv(ports.b, dataDir, vendor.url), "/healthz");
    servers.push(b);
    for (let round = 1; round <= ROUNDS; round++) {
      const x = await cappedBurst("keybrake×2", [a, b], sqliteAudit, vendor, round, checks);
      bursts.push(x);
      log(x);
    }
    await b.stop();
    await a.stop();
    await floor.stop();

    // PostgreSQL: the replicas share one database; the same calls, one replica then two.
    const cluster = await startCluster();
    const databaseUrl = cluster.createDatabase("contention");
    const pgEnv = (port: number) => ({ ...keybrakeEnv(port, makeTempDir("keybrake-bench-contention-pg-"), vendor.url), KEYBRAKE_DATABASE_URL: databaseUrl, KEYBRAKE_MASTER_KEY: PG_MASTER_KEY });
    const pgAudit = pgAuditCounts(databaseUrl);
    const pgA = await startServer("keybrake-pg-a", keybrakeCommand(), ports.pgA, pgEnv(ports.pgA), "/healthz");
    servers.push(pgA);
    const pgB = await startServer("keybrake-pg-b", keybrakeCommand(), ports.pgB, pgEnv(ports.pgB), "/healthz");
    servers.push(pgB);
    for (let round = 1; round <= ROUNDS; round++) {
      for (const [mode, replicas] of [["pg×1", [pgA]], ["pg×2", [pgA, pgB]]] as const) {
        const x = await cappedBurst(mode, [...replicas], pgAudit, vendor, round, checks);
        bursts.push(x);
        log(x);
      }
    }
  } finally {
    for (const s of servers.reverse()) await s.stop();
  }

  const drain = (mode: Burst["mode"]) => median(bursts.filter((x) => x.mode === mode).map((x) => x.drainMs));
  const summary = {
    total: TOTAL,
    allowed: ALLOWED,
    rounds: ROUNDS,
    drainMs: { direct: drain("direct"), floor: drain("bun-floor"), one: drain("keybrake×1"), two: drain("keybrake×2"), pgOne: drain("pg×1"), pgTwo: drain("pg×2") },
  };
  writeResult("contention", { summary, bursts, checks });
  const failed = checks.filter((c) => !c.ok).length;
  console.log(
    `contention: median drain direct ${summary.drainMs.direct.toFixed(0)} ms, bun-floor ${summary.drainMs.floor.toFixed(0)} ms, keybrake×1 ${summary.drainMs.one.toFixed(0)} ms, keybrake×2 ${summary.drainMs.two.toFixed(0)} ms, pg×1 ${summary.drainMs.pgOne.toFixed(0)} ms, pg×2 ${summary.drainMs.pgTwo.toFixed(0)} ms; ${checks.length - failed}/${checks.length} checks passed`,
  );
  process.exit(failed ? 1 : 0);
}

await main();
