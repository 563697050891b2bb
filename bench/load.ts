/**
 * The interleaved load bench: wrk against five targets in front of the same
 * fake vendor, round-robin, several rounds, medians reported.
 *
 *   direct      wrk → fake vendor                        (the floor)
 *   nginx       wrk → nginx reverse proxy → fake vendor  (a C proxy, no ledger)
 *   http-proxy  wrk → http-proxy on Node → fake vendor   (a JS proxy, no ledger)
 *   bun-floor   wrk → Bun.serve + fetch → fake vendor    (the thinnest Bun proxy: Keybrake's ceiling)
 *   keybrake    wrk → dist/keybrake → fake vendor        (ledger + audit on every call, SQLite)
 *   keybrake-pg   the same on PostgreSQL, one replica
 *   keybrake-pg2  two replicas on one PostgreSQL database behind nginx (round robin)
 *
 * Scenarios: the nginx fake vendor at 1 and 32 connections, and the 50 ms Bun
 * fake vendor at 32 connections, every target in each. After every
 * Keybrake run the ledger is checked against what really reached the vendor
 * (see checkLedger).
 *
 * The servers are started by bench/run.sh, which passes their URLs in the
 * environment; this script only drives wrk and checks. Results go to
 * bench/results/load.json; bench/report.ts turns them into the table.
 */
import {
  auditCounts,
  check,
  env,
  issueKey,
  ledgerCounters,
  keyView,
  median,
  pgAuditCounts,
  PI_MICROS,
  runBounded,
  settledView,
  SMOKE,
  usdToMicros,
  wrkCommand,
  wrkResultFields,
  writeResult,
  type AuditCounts,
  type Check,
} from "./lib.ts";

type TargetId = "direct" | "nginx" | "http-proxy" | "bun-floor" | "keybrake" | "keybrake-pg" | "keybrake-pg2";
type VendorKind = "fast" | "slow";

interface Target {
  id: TargetId;
  url: string;
  /** Set for Keybrake: the key's audit rows, read from its backend's storage. */
  audit?: (keyId: string) => Promise<AuditCounts>;
  /** Set when `url` balances over several replicas: each one's own API, to read the spend back through every one. */
  replicas?: string[];
}

const sqliteAudit = (dataDir: string) => async (keyId: string) => auditCounts(dataDir, keyId);

interface Scenario {
  id: string;
  vendor: VendorKind;
  conns: number;
  seconds: number;
  /** The wrk script under bench/: pi.lua, or pi-idem.lua for stripe-node's fresh Idempotency-Key per call. */
  lua: string;
}

export interface WrkResult {
  requests: number;
  ok2xx: number;
  non2xx: number;
  connect: number;
  read: number;
  write: number;
  timeout: number;
  duration_us: number;
  p50_us: number;
  p90_us: number;
  p99_us: number;
  max_us: number;
  mean_us: number;
  rps: number;
}

export interface Run {
  round: number; // 0 = warm-up, not in the medians
  scenario: string;
  target: TargetId;
  wrk: WrkResult;
  ledger?: LedgerSnapshot;
}

interface LedgerSnapshot {
  keyId: string;
  atVendor: number;
  spentMicros: number;
  reservedMicros: number;
  auditRows: number;
  auditSettled: number;
  /** Several replicas: the key's spend as each one's API reads it back. */
  replicaSpentMicros?: number[];
  /** Group commit during the run (GET /metrics, every replica): ledger writes per commit, and per WAL fsync (SQLite). */
  writesPerCommit: number;
  writesPerFsync: number | null;
  /** PostgreSQL: the share of writes that took the batched path, and batches rolled back and rerun one write at a time. */
  batchedShare: number | null;
  batchRollbacks: number;
}

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? (SMOKE ? 1 : 3));
const SECONDS = Number(process.env.BENCH_DURATION ?? (SMOKE ? 2 : 8));
const SLOW_SECONDS = Number(process.env.BENCH_SLOW_DURATION ?? (SMOKE ? 2 : 5));
const WARMUP_SECONDS = Number(process.env.BENCH_WARMUP ?? (SMOKE ? 1 : 2));
/** Far above what any run can spend ($29 × ~10⁵ calls), below the API's $10⁹ maximum. */
const BIG_CAP_USD = 1_000_000_000;

const TARGETS: Record<VendorKind, Target[]> = {
  fast: [
    { id: "direct", url: env("VENDOR_URL") },
    { id: "nginx", url: env("NGINX_PROXY_URL") },
    { id: "http-proxy", url: env("HTTP_PROXY_URL") },
    { id: "bun-floor", url: env("BUN_PROXY_URL") },
    { id: "keybrake", url: env("KEYBRAKE_URL"), audit: sqliteAudit(env("KEYBRAKE_DATA_DIR")) },
    { id: "keybrake-pg", url: env("KEYBRAKE_PG_URL"), audit: pgAuditCounts(env("KEYBRAKE_PG_DATABASE_URL")) },
    { id: "keybrake-pg2", url: env("KEYBRAKE_PG_PAIR_URL"), audit: pgAuditCounts(env("KEYBRAKE_PG_PAIR_DATABASE_URL")), replicas: env("KEYBRAKE_PG_REPLICA_URLS").split(" ") },
  ],
  slow: [
    { id: "direct", url: env("SLOW_VENDOR_URL") },
    { id: "nginx", url: env("NGINX_PROXY_SLOW_URL") },
    { id: "http-proxy", url: env("HTTP_PROXY_SLOW_URL") },
    { id: "bun-floor", url: env("BUN_PROXY_SLOW_URL") },
    { id: "keybrake", url: env("KEYBRAKE_SLOW_URL"), audit: sqliteAudit(env("KEYBRAKE_SLOW_DATA_DIR")) },
    // The same databases as the fast vendor's replicas (fresh keys per run keep the runs apart).
    { id: "keybrake-pg", url: env("KEYBRAKE_PG_SLOW_URL"), audit: pgAuditCounts(env("KEYBRAKE_PG_DATABASE_URL")) },
    { id: "keybrake-pg2", url: env("KEYBRAKE_PG_SLOW_PAIR_URL"), audit: pgAuditCounts(env("KEYBRAKE_PG_PAIR_DATABASE_URL")), replicas: env("KEYBRAKE_PG_SLOW_REPLICA_URLS").split(" ") },
  ],
};

const SCENARIOS: Scenario[] = [
  { id: "fast-c1", vendor: "fast", conns: 1, seconds: SECONDS, lua: "pi.lua" },
  { id: "fast-c32", vendor: "fast", conns: 32, seconds: SECONDS, lua: "pi.lua" },
  // What stripe-node really sends: every call takes the repeat-guard path and stores its answer.
  { id: "fast-c32-idem", vendor: "fast", conns: 32, seconds: SECONDS, lua: "pi-idem.lua" },
  { id: "slow50-c32", vendor: "slow", conns: 32, seconds: SLOW_SECONDS, lua: "pi.lua" },
];

// ---------------------------------------------------------------------------
// wrk
// ---------------------------------------------------------------------------

async function runWrk(url: string, sc: Scenario, seconds: number, vaultKey: string): Promise<WrkResult> {
  const { code, stdout, stderr } = await runBounded(wrkCommand(url, sc.conns, seconds, vaultKey, sc.lua), (seconds + 20) * 1000);
  const n = wrkResultFields(stdout);
  if (code !== 0 || !n) throw new Error(`wrk failed (exit ${code}): ${stderr || stdout}`);
  const r = {
    requests: n("requests"),
    ok2xx: n("ok2xx"),
    non2xx: n("non2xx"),
    connect: n("connect"),
    read: n("read"),
    write: n("write"),
    timeout: n("timeout"),
    duration_us: n("duration_us"),
    p50_us: n("p50_us"),
    p90_us: n("p90_us"),
    p99_us: n("p99_us"),
    max_us: n("max_us"),
    mean_us: n("mean_us"),
    rps: 0,
  };
  r.rps = r.requests / (r.duration_us / 1e6);
  return r;
}

const socketErrors = (w: WrkResult) => w.connect + w.read + w.write + w.timeout;

// ---------------------------------------------------------------------------
// What reached the vendor: nginx's request counter, or the Bun fake's.
// ---------------------------------------------------------------------------

/** nginx stub_status "requests" counts every request, the probe itself included. */
async function nginxRequests(): Promise<number> {
  const text = await (await fetch(`${env("VENDOR_URL")}/__nginx_status`)).text();
  const m = /\n\s*(\d+)\s+(\d+)\s+(\d+)\s*\n/.exec(text);
  if (!m) throw new Error(`unexpected stub_status: ${text}`);
  return Number(m[3]);
}

async function slowVendorCount(): Promise<number> {
  return ((await (await fetch(`${env("SLOW_VENDOR_URL")}/__count`)).json()) as { count: number }).count;
}

/**
 * Returns a function that, called after the run, says how many calls reached
 * the vendor since. Starts counting only once the vendor is quiet: when wrk
 * stops, the previous target (a proxy) may still be forwarding the calls wrk
 * abandoned, and those must not be counted against Keybrake.
 */
async function vendorCounter(kind: VendorKind): Promise<() => Promise<number>> {
  const read = kind === "fast" ? nginxRequests : slowVendorCount;
  const probeCost = kind === "fast" ? 1 : 0; // each stub_status read counts itself
  let before = await read();
  for (let i = 0; i < 30; i++) {
    await Bun.sleep(100);
    const now = await read();
    const quiet = now - before === probeCost;
    before = now;
    if (quiet) break;
  }
  return async () => (await read()) - before - probeCost;
}

// ---------------------------------------------------------------------------
// One run, and the ledger checks after a Keybrake run.
// ---------------------------------------------------------------------------

async function runTarget(t: Target, sc: Scenario, round: number, seconds: number, checks: Check[]): Promise<Run> {
  if (!t.audit) {
    const wrk = await runWrk(t.url, sc, seconds, "vk_unused_by_plain_proxies");
    return { round, scenario: sc.id, target: t.id, wrk };
  }
  // A fresh key per run, so each run's ledger can be checked on its own.
  const key = await issueKey(t.url, BIG_CAP_USD, `bench/${sc.id}/round-${round}`);
  const reachedVendor = await vendorCounter(sc.vendor);
  const counted = t.replicas ?? [t.url];
  const countersBefore = await ledgerCounters(counted);
  const wrk = await runWrk(t.url, sc, seconds, key.vault_key);
  const view = await settledView(t.url, key.key_id);
  const countersAfter = await ledgerCounters(counted);
  const writes = countersAfter.writes - countersBefore.writes;
  const fsyncs = countersAfter.fsyncs - countersBefore.fsyncs;
  const audit = await t.audit(key.key_id);
  const replicaViews = t.replicas && (await Promise.all(t.replicas.map((url) => keyView(url, key.key_id))));
  const ledger: LedgerSnapshot = {
    keyId: key.key_id,
    atVendor: await reachedVendor(),
    spentMicros: usdToMicros(view.spent_total_usd),
    reservedMicros: usdToMicros(view.reserved_usd),
    auditRows: audit.rows,
    auditSettled: audit.settled,
    replicaSpentMicros: replicaViews?.map((v) => usdToMicros(v.spent_total_usd)),
    writesPerCommit: writes / (countersAfter.commits - countersBefore.commits),
    writesPerFsync: fsyncs > 0 ? writes / fsyncs : null,
    batchedShare: t.id.startsWith("keybrake-pg") ? (countersAfter.batched - countersBefore.batched) / writes : null,
    batchRollbacks: countersAfter.rollbacks - countersBefore.rollbacks,
  };
  checkLedger(`${t.id} ${sc.id} round ${round}`, sc.conns, wrk, ledger, checks);
  return { round, scenario: sc.id, target: t.id, wrk, ledger };
}

/**
 * The ledger must add up exactly against the vendor's own count, and be
 * consistent with what wrk saw. wrk stops on a clock: calls still in flight at
 * that instant are dropped from its count, yet Keybrake forwards and settles
 * them. So the vendor count may exceed wrk's 2xx count, by at most one call per
 * connection.
 */
function checkLedger(what: string, conns: number, wrk: WrkResult, l: LedgerSnapshot, checks: Check[]): void {
  const inFlight = l.atVendor - wrk.ok2xx;
  check(checks, `${what}: no refusals or socket errors`, wrk.non2xx === 0 && socketErrors(wrk) === 0, `${wrk.non2xx} non-2xx, ${socketErrors(wrk)} socket errors`);
  check(checks, `${what}: nothing left reserved`, l.reservedMicros === 0, `reserved_usd = ${l.reservedMicros / 1e6}`);
  check(
    checks,
    `${what}: spent = successes × $29`,
    l.spentMicros === l.atVendor * PI_MICROS && inFlight >= 0 && inFlight <= conns,
    `spent $${l.spentMicros / 1e6} = ${l.atVendor} calls at the vendor × $29; wrk counted ${wrk.ok2xx} 2xx (+${inFlight} in flight when wrk stopped, ≤ ${conns})`,
  );
  check(
    checks,
    `${what}: one audit row per request`,
    l.auditRows === l.atVendor && l.auditSettled === l.auditRows,
    `${l.auditRows} audit rows (${l.auditSettled} settled) for ${l.atVendor} calls at the vendor, ${wrk.requests} completed in wrk`,
  );
  if (l.replicaSpentMicros) {
    check(
      checks,
      `${what}: every replica reads back the same spend`,
      l.replicaSpentMicros.every((m) => m === l.spentMicros),
      `spent $${l.replicaSpentMicros.map((m) => m / 1e6).join(" / $")} through each replica's API`,
    );
  }
}

// ---------------------------------------------------------------------------
// Rounds, medians.
// ---------------------------------------------------------------------------

export interface Summary {
  scenario: string;
  target: TargetId;
  rounds: number;
  rps: number;
  p50_us: number;
  p99_us: number;
  errors: number;
}

function summarise(runs: Run[]): Summary[] {
  const out: Summary[] = [];
  for (const sc of SCENARIOS) {
    for (const t of TARGETS[sc.vendor]) {
      const mine = runs.filter((r) => r.round > 0 && r.scenario === sc.id && r.target === t.id);
      out.push({
        scenario: sc.id,
        target: t.id,
        rounds: mine.length,
        rps: median(mine.map((r) => r.wrk.rps)),
        p50_us: median(mine.map((r) => r.wrk.p50_us)),
        p99_us: median(mine.map((r) => r.wrk.p99_us)),
        errors: mine.reduce((n, r) => n + r.wrk.non2xx + socketErrors(r.wrk), 0),
      });
    }
  }
  return out;
}

const fmtRun = (r: Run) =>
  `${r.scenario.padEnd(11)} ${r.target.padEnd(12)} ${Math.round(r.wrk.rps).toString().padStart(7)} rps  p50 ${(r.wrk.p50_us / 1000).toFixed(2).padStart(6)} ms  p99 ${(r.wrk.p99_us / 1000).toFixed(2).padStart(7)} ms  errors ${r.wrk.non2xx + socketErrors(r.wrk)}`;

/** Each round starts one target later, so no target always runs first (or right after Keybrake's writes). */
const rotate = <T>(xs: T[], by: number) => xs.slice(by % xs.length).concat(xs.slice(0, by % xs.length));

async function main() {
  const checks: Check[] = [];
  const runs: Run[] = [];
  const started = Date.now();
  console.log(`load: ${ROUNDS} round(s); ${SECONDS}s per run on the nginx fake, ${SLOW_SECONDS}s on the 50 ms fake; warm-up ${WARMUP_SECONDS}s`);

  // Warm-up (JIT, connection pools, SQLite cache): one run per target and vendor, not counted.
  for (const sc of SCENARIOS.filter((s) => s.conns === 32)) {
    for (const t of TARGETS[sc.vendor]) {
      const r = await runTarget(t, sc, 0, WARMUP_SECONDS, checks);
      runs.push(r);
      console.log(`[warm-up]   ${fmtRun(r)}`);
    }
  }
  for (let round = 1; round <= ROUNDS; round++) {
    for (const sc of SCENARIOS) {
      for (const t of rotate(TARGETS[sc.vendor], round - 1)) {
        const r = await runTarget(t, sc, round, sc.seconds, checks);
        runs.push(r);
        console.log(`[round ${round}/${ROUNDS}] ${fmtRun(r)}`);
      }
    }
  }
  const summary = summarise(runs);
  writeResult("load", {
    config: { rounds: ROUNDS, seconds: SECONDS, slowSeconds: SLOW_SECONDS, warmupSeconds: WARMUP_SECONDS, scenarios: SCENARIOS },
    elapsedSeconds: (Date.now() - started) / 1000,
    summary,
    runs,
    checks,
  });
  const failed = checks.filter((c) => !c.ok).length;
  console.log(`load: ${checks.length - failed}/${checks.length} ledger checks passed in ${((Date.now() - started) / 1000).toFixed(0)}s`);
  process.exit(failed ? 1 : 0);
}

await main();
