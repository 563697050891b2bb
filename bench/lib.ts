/**
 * Helpers shared by the bench scripts (load.ts, contention.ts, audit-scale.ts,
 * report.ts). Nothing here measures anything by itself.
 */
import { Database } from "bun:sqlite";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openPostgres } from "../src/db/pg.ts";

export const ROOT = join(import.meta.dir, "..");
export const RESULTS_DIR = process.env.BENCH_RESULTS_DIR ?? join(ROOT, "bench", "results");
export const ADMIN_TOKEN = process.env.BENCH_ADMIN_TOKEN ?? "kbt_bench_admin_token_0123456789abcdef";
export const STRIPE_SECRET = "sk_test_bench_realsecret_51Hxxxxxxxxxxxxxxxxxx";
/** KEYBRAKE_MASTER_KEY for Keybrake on PostgreSQL: every replica of one database needs the same (run.sh has its twin). */
export const PG_MASTER_KEY = "kbm_bench_master_key_0123456789abcdef0123456789";
export const SMOKE = process.env.BENCH_SMOKE === "1";
/** Core for servers (Keybrake, nginx, Node, fakes) and core for load generators; see run.sh. */
export const SERVER_CPU = process.env.BENCH_SERVER_CPU ?? "1";
export const LOAD_CPU = process.env.BENCH_LOAD_CPU ?? "0";
/** Price of one bench call: amount=2900 usd → $29.00 in micro-dollars. */
export const PI_MICROS = 29_000_000;

export function env(name: string): string {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (run the bench through bench/run.sh)`);
  return v;
}

export function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

// ---------------------------------------------------------------------------
// PASS/FAIL checks: printed as they happen, collected into the results JSON.
// ---------------------------------------------------------------------------

export interface Check {
  name: string;
  ok: boolean;
  detail: string;
}

export function check(into: Check[], name: string, ok: boolean, detail: string): boolean {
  into.push({ name, ok, detail });
  console.log(`  ${ok ? "PASS" : "FAIL"}  ${name}: ${detail}`);
  return ok;
}

export function writeResult(name: string, data: unknown): void {
  mkdirSync(RESULTS_DIR, { recursive: true });
  writeFileSync(join(RESULTS_DIR, `${name}.json`), JSON.stringify(data, null, 2));
}

export function readResult<T>(name: string): T | null {
  try {
    return JSON.parse(readFileSync(join(RESULTS_DIR, `${name}.json`), "utf8")) as T;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------
// Management API.
// ---------------------------------------------------------------------------

export async function api(base: string, method: string, path: string, body?: unknown): Promise<{ status: number; json: any }> {
  const res = await fetch(base + path, {
    method,
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, ...(body === undefined ? {} : { "content-type": "application/json" }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  try {
    return { status: res.status, json: JSON.parse(text) };
  } catch {
    return { status: res.status, json: text };
  }
}

export interface IssuedKey {
  key_id: string;
  vault_key: string;
}

/** A Stripe vault key allowed to create PaymentIntents, capped at `capUsd` per day. */
export async function issueKey(base: string, capUsd: number, label: string): Promise<IssuedKey> {
  const r = await api(base, "POST", "/vault/keys", {
    vendor: "stripe",
    daily_usd_cap: capUsd,
    allowed_endpoints: ["POST /v1/payment_intents"],
    expires_in: "6h",
    agent_run_label: label,
  });
  if (r.status !== 201) throw new Error(`issuing a key failed: ${r.status} ${JSON.stringify(r.json)}`);
  return r.json as IssuedKey;
}

export interface KeyView {
  spent_total_usd: number;
  reserved_usd: number;
  spent_today_usd: number;
}

export async function keyView(base: string, keyId: string): Promise<KeyView> {
  const r = await api(base, "GET", `/vault/keys/${keyId}`);
  if (r.status !== 200) throw new Error(`GET /vault/keys/${keyId} failed: ${r.status}`);
  return r.json as KeyView;
}

/**
 * Waits (bounded) until nothing is reserved on the key and its spend holds still across two reads
 * 250 ms apart: when wrk stops, calls it abandoned may still be in flight inside Keybrake — some
 * not even admitted yet (a PostgreSQL key's writes queue behind its running batch), so one read
 * of "nothing reserved" can come before their reservations exist.
 */
export async function settledView(base: string, keyId: string, timeoutMs = 5000): Promise<KeyView> {
  const deadline = performance.now() + timeoutMs;
  let last: KeyView | null = null;
  for (;;) {
    const v = await keyView(base, keyId);
    const still = last !== null && last.reserved_usd === 0 && v.reserved_usd === 0 && last.spent_total_usd === v.spent_total_usd;
    if (still || performance.now() > deadline) return v;
    last = v;
    await Bun.sleep(v.reserved_usd === 0 ? 250 : 50);
  }
}

/** USD as returned by the API → integer micro-dollars (the API rounds to 6 decimals). */
export const usdToMicros = (usd: number) => Math.round(usd * 1e6);

/** The ledger's group-commit counters (GET /metrics), summed over every replica named; the batch ones are PostgreSQL's (0 on SQLite). */
export async function ledgerCounters(urls: string[]): Promise<{ commits: number; writes: number; fsyncs: number; batched: number; rollbacks: number }> {
  const sum = { commits: 0, writes: 0, fsyncs: 0, batched: 0, rollbacks: 0 };
  for (const url of urls) {
    const text = await (await fetch(`${url}/metrics`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).text();
    const read = (name: string) => Number(new RegExp(`^keybrake_ledger_${name}_total (\\d+)$`, "m").exec(text)?.[1] ?? NaN);
    sum.commits += read("commits");
    sum.writes += read("writes");
    sum.fsyncs += read("fsyncs");
    sum.batched += read("batched_writes") || 0;
    sum.rollbacks += read("batch_rollbacks") || 0;
  }
  return sum;
}

export interface AuditCounts {
  rows: number;
  settled: number;
  forwarded: number;
  capHit: number;
}

/** Audit rows of one key, read straight from the SQLite file (WAL lets us read while Keybrake writes). */
export function auditCounts(dataDir: string, keyId: string): AuditCounts {
  const db = new Database(join(dataDir, "keybrake.db"), { readonly: true });
  try {
    const r = db
      .query(
        `SELECT count(*) AS rows,
                coalesce(sum(ledger_state = 'settled'), 0) AS settled,
                coalesce(sum(outcome = 'forwarded'), 0) AS forwarded,
                coalesce(sum(outcome = 'cap_hit'), 0) AS capHit
           FROM audit_log WHERE key_id = ?`,
      )
      .get(keyId) as AuditCounts;
    return r;
  } finally {
    db.close();
  }
}

/** The same counts from a PostgreSQL database (the one Keybrake's KEYBRAKE_DATABASE_URL names). */
export function pgAuditCounts(databaseUrl: string): (keyId: string) => Promise<AuditCounts> {
  const sql = openPostgres(databaseUrl, { max: 1 });
  return async (keyId) => {
    const [r] = await sql`SELECT count(*)::int AS rows,
                                 count(*) FILTER (WHERE ledger_state = 'settled')::int AS settled,
                                 count(*) FILTER (WHERE outcome = 'forwarded')::int AS forwarded,
                                 count(*) FILTER (WHERE outcome = 'cap_hit')::int AS "capHit"
                            FROM audit_log WHERE key_id = ${keyId}`;
    return r as AuditCounts;
  };
}

// ---------------------------------------------------------------------------
// Child processes: every server a script starts is pinned to the server core,
// tracked, and killed by pid on exit, on error and on SIGINT/SIGTERM.
// ---------------------------------------------------------------------------

const children = new Set<ReturnType<typeof Bun.spawn>>();
const tempDirs = new Set<string>();

/** A scratch directory (a data dir), removed on exit even when a signal cuts the script short. */
export function makeTempDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  tempDirs.add(dir);
  return dir;
}

function cleanUp(): void {
  for (const p of children) {
    if (p.exitCode === null) p.kill("SIGTERM");
  }
  children.clear();
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
  tempDirs.clear();
}

// process.exit() skips `finally` blocks, so signals clean up here.
for (const sig of ["SIGINT", "SIGTERM"] as const) {
  process.on(sig, () => {
    cleanUp();
    process.exit(130);
  });
}
process.on("exit", cleanUp);

export interface Server {
  name: string;
  url: string;
  pid: number;
  proc: ReturnType<typeof Bun.spawn>;
  log: () => string;
  stop(): Promise<void>;
}

/** Starts `cmd` on the server core and waits (bounded) until `readyPath` answers. */
export async function startServer(name: string, cmd: string[], port: number, envVars: Record<string, string>, readyPath: string): Promise<Server> {
  // taskset execs the command, so the pid we get is the server's own.
  const proc = Bun.spawn(["taskset", "-c", SERVER_CPU, ...cmd], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/root", ...envVars },
    stdout: "pipe",
    stderr: "pipe",
  });
  children.add(proc);
  let out = "";
  const drain = async (s: ReadableStream<Uint8Array>) => {
    for await (const chunk of s) out += new TextDecoder().decode(chunk);
  };
  void drain(proc.stdout as ReadableStream<Uint8Array>);
  void drain(proc.stderr as ReadableStream<Uint8Array>);
  const url = `http://127.0.0.1:${port}`;
  const server: Server = {
    name,
    url,
    pid: proc.pid,
    proc,
    log: () => out,
    async stop() {
      if (proc.exitCode === null) proc.kill("SIGTERM");
      await Promise.race([proc.exited, Bun.sleep(5000)]);
      if (proc.exitCode === null) proc.kill("SIGKILL");
      children.delete(proc);
    },
  };
  for (let i = 0; i < 200; i++) {
    if (proc.exitCode !== null) throw new Error(`${name} exited (${proc.exitCode}): ${out}`);
    try {
      const r = await fetch(url + readyPath);
      await r.arrayBuffer();
      return server;
    } catch {}
    await Bun.sleep(50);
  }
  await server.stop();
  throw new Error(`${name} did not answer on ${url}${readyPath} within 10 s: ${out}`);
}

/** Runs a load generator on the load core; killed if it outlives `timeoutMs` (every loop here is bounded). */
export async function runBounded(cmd: string[], timeoutMs: number): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const proc = Bun.spawn(["taskset", "-c", LOAD_CPU, ...cmd], { cwd: ROOT, stdout: "pipe", stderr: "pipe" });
  children.add(proc);
  const timer = setTimeout(() => proc.kill("SIGKILL"), timeoutMs);
  const [stdout, stderr] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text()]);
  await proc.exited;
  clearTimeout(timer);
  children.delete(proc);
  return { code: proc.exitCode, stdout, stderr };
}

/** The Keybrake command: the built binary, unless BENCH_KEYBRAKE_CMD names another (e.g. a scratch checkout). */
export function keybrakeCommand(): string[] {
  const custom = process.env.BENCH_KEYBRAKE_CMD;
  return custom ? custom.split(/\s+/).filter(Boolean) : [join(ROOT, "dist", "keybrake"), "serve"];
}

export function keybrakeEnv(port: number, dataDir: string, stripeBaseUrl: string): Record<string, string> {
  return {
    KEYBRAKE_PORT: String(port),
    KEYBRAKE_HOST: "127.0.0.1",
    KEYBRAKE_DATA_DIR: dataDir,
    KEYBRAKE_ADMIN_TOKEN: ADMIN_TOKEN,
    KEYBRAKE_STRIPE_BASE_URL: stripeBaseUrl,
    KEYBRAKE_STRIPE_SECRET_KEY: STRIPE_SECRET,
    KEYBRAKE_LOG: "silent",
  };
}

/** Resident set size and its high-water mark, in MB, from /proc. */
export function memoryMb(pid: number): { rss: number; peak: number } {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? NaN);
  return { rss: kb("VmRSS") / 1024, peak: kb("VmHWM") / 1024 };
}

// ---------------------------------------------------------------------------
// A big audit log (audit-scale.ts, ab.ts).
// ---------------------------------------------------------------------------

const DAY_MS = 86_400_000;
/** Run labels the seeded rows are spread over. */
export const AUDIT_LABELS = 1000;
export const labelOf = (n: number) => `airflow-billing/scheduled__2026-10-01#${String(n).padStart(4, "0")}`;
/** Cheap, unique, random-looking hex (Stripe ids are random, so the object-id index sees random inserts). */
const hexId = (i: number) => ((Math.imul(i + 1, 2654435761) >>> 0).toString(16).padStart(8, "0") + i.toString(16)).padEnd(24, "0");

/** Bulk insert in 50k-row transactions with a large page cache; the server is not running. */
export function seedAuditRows(dbFile: string, rows: number): number {
  const t0 = performance.now();
  const db = new Database(dbFile);
  db.exec("PRAGMA synchronous = OFF"); // this connection only: a crash while seeding just means re-running the bench
  db.exec("PRAGMA cache_size = -262144"); // 256 MB, so index pages stay cached during the bulk load
  const insert = db.prepare(
    `INSERT INTO audit_log (ts, key_id, agent_run_label, vendor, method, path, outcome, error_code, vendor_status,
                            estimated_micros, settled_micros, ledger_state, spend_day, vendor_request_id, vendor_object_id,
                            idempotency_key, latency_ms, replay_of)
     VALUES (?, ?, ?, 'stripe', 'POST', '/v1/payment_intents', ?, ?, ?, 29000000, ?, ?, ?, ?, ?, NULL, ?, NULL)`,
  );
  const start = Date.now() - 30 * DAY_MS;
  const step = (30 * DAY_MS) / rows;
  const chunk = db.transaction((from: number, to: number) => {
    for (let i = from; i < to; i++) {
      const ts = Math.floor(start + i * step);
      const label = i % AUDIT_LABELS;
      const capHit = i % 25 === 0;
      const id = hexId(i);
      insert.run(
        ts,
        `key_seed${String(label).padStart(4, "0")}`,
        labelOf(label),
        capHit ? "cap_hit" : "forwarded",
        capHit ? "cap_exceeded" : null,
        capHit ? null : 200,
        capHit ? null : 29_000_000,
        capHit ? "none" : "settled",
        new Date(ts).toISOString().slice(0, 10),
        capHit ? null : `req_${id}`,
        capHit ? null : `pi_${id}`,
        capHit ? 0.05 : 180 + (i % 97),
      );
    }
  });
  for (let from = 0; from < rows; from += 50_000) chunk.immediate(from, Math.min(rows, from + 50_000));
  db.exec("PRAGMA wal_checkpoint(TRUNCATE)");
  db.close();
  return (performance.now() - t0) / 1000;
}

/** The wrk command line for `script` (under bench/) against `url`'s PaymentIntents, with the vault key `key`. */
export function wrkCommand(url: string, conns: number, seconds: number, key: string, script: string): string[] {
  return ["wrk", "-t1", `-c${conns}`, `-d${seconds}s`, "--timeout", "5s", "-s", join(ROOT, "bench", script), `${url}/v1/payment_intents`, "--", key];
}

/** The numbers the Lua script's done() prints on its WRK_RESULT line, by name; null when wrk printed none. */
export function wrkResultFields(stdout: string): ((name: string) => number) | null {
  const line = stdout.split("\n").find((l) => l.startsWith("WRK_RESULT "));
  if (!line) return null;
  const fields = Object.fromEntries(line.slice("WRK_RESULT ".length).trim().split(" ").map((kv) => kv.split("=") as [string, string]));
  return (name) => Number(fields[name]);
}

/**
 * One wrk run of $29 PaymentIntents against `url`, on the load core: bench/pi.lua (no
 * Idempotency-Key) unless `script` (or BENCH_LUA) names another, such as pi-idem.lua (a fresh
 * key per call, as stripe-node sends).
 */
export async function wrk(url: string, conns: number, seconds: number, key: string, script = process.env.BENCH_LUA ?? "pi.lua") {
  const { stdout } = await runBounded(wrkCommand(url, conns, seconds, key, script), (seconds + 20) * 1000);
  const n = wrkResultFields(stdout);
  if (!n) throw new Error(`wrk failed: ${stdout}`);
  return { requests: n("requests"), ok2xx: n("ok2xx"), non2xx: n("non2xx"), errors: n("connect") + n("read") + n("write") + n("timeout"), rps: n("requests") / (n("duration_us") / 1e6), p50: n("p50_us"), p99: n("p99_us") };
}
