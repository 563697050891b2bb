import { Database } from "bun:sqlite";
import { mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createApp } from "../src/app.ts";
import { loadConfig } from "../src/config.ts";
import { createServices, MAX_PROXY_BODY_BYTES, type Services } from "../src/services.ts";
import { openPostgres, type Pg } from "../src/db/pg.ts";
import { freshDatabase } from "./pg.ts";

export const ADMIN_TOKEN = "kbt_test_admin_token_0123456789abcdef";

export function tempDir(name = "keybrake-test-"): string {
  return mkdtempSync(join(tmpdir(), name));
}

export interface Running {
  url: string;
  port: number;
  dataDir: string;
  services: Services;
  /** Management API call with the admin token; returns status, parsed JSON and headers. */
  api(method: string, path: string, body?: unknown, token?: string | null): Promise<{ status: number; json: any; headers: Headers }>;
  issueKey(body: Record<string, unknown>): Promise<{ key_id: string; vault_key: string; [k: string]: any }>;
  stop(): Promise<void>;
}

/**
 * Which backend test servers run on: `KEYBRAKE_TEST_BACKEND=postgres` (npm test's second pass,
 * test/run.sh) runs the same suites on PostgreSQL; unset, SQLite.
 */
export const TEST_BACKEND: "sqlite" | "postgres" = process.env.KEYBRAKE_TEST_BACKEND === "postgres" ? "postgres" : "sqlite";
const TEST_MASTER_KEY = "kbm_test_master_key_0123456789abcdef0123456789";
const databaseOfDataDir = new Map<string, Promise<string>>();

/**
 * The environment that puts a server on the test backend. On PostgreSQL, one database per data dir:
 * servers started on the same data dir (two processes, a restart) share one database, as they
 * would share one SQLite file; every replica gets the same master key, as a deployment must.
 */
export async function testBackendEnv(dataDir: string | undefined, backend = TEST_BACKEND): Promise<Record<string, string>> {
  if (backend !== "postgres") return {};
  const key = dataDir ?? `anonymous-${Math.random()}`;
  if (!databaseOfDataDir.has(key)) databaseOfDataDir.set(key, freshDatabase("kb"));
  return { KEYBRAKE_DATABASE_URL: await databaseOfDataDir.get(key)!, KEYBRAKE_MASTER_KEY: TEST_MASTER_KEY };
}

/** The real server, in this process, on a loopback port. */
export async function startKeybrake(env: Record<string, string> = {}, opts: { dataDir?: string; keepData?: boolean; backend?: "sqlite" | "postgres" } = {}): Promise<Running> {
  const dataDir = opts.dataDir ?? tempDir();
  const backend = await testBackendEnv(dataDir, opts.backend);
  const config = loadConfig({ KEYBRAKE_DATA_DIR: dataDir, KEYBRAKE_ADMIN_TOKEN: ADMIN_TOKEN, KEYBRAKE_HOST: "127.0.0.1", KEYBRAKE_PORT: "0", KEYBRAKE_LOG: "silent", ...backend, ...env });
  const services = await createServices(config);
  services.retention.start();
  let port = 0;
  const app = createApp(services, { proxyBaseUrl: () => `http://127.0.0.1:${port}` });
  app.listen({ port: 0, hostname: "127.0.0.1", maxRequestBodySize: MAX_PROXY_BODY_BYTES + 1024 });
  port = app.server!.port!;
  const url = `http://127.0.0.1:${port}`;
  const running: Running = {
    url,
    port,
    dataDir,
    services,
    api: (method, path, body, token = ADMIN_TOKEN) => apiCall(url, method, path, body, token),
    async issueKey(body) {
      const r = await running.api("POST", "/vault/keys", body);
      if (r.status !== 201) throw new Error(`issue failed: ${r.status} ${JSON.stringify(r.json)}`);
      return r.json;
    },
    async stop() {
      await app.stop(true);
      await services.close();
      if (!opts.keepData && !opts.dataDir) rmSync(dataDir, { recursive: true, force: true });
    },
  };
  return running;
}

/** The SQLite file of a server on the SQLite backend, for tests about SQLite itself. */
export function sqliteOf(s: Services): Database {
  if (s.backend.kind !== "sqlite") throw new Error("this test looks at the SQLite file; the server runs on PostgreSQL");
  return s.backend.db.sqlite;
}

/**
 * Rows of one raw query on whichever backend the server runs, for tests that check what was
 * stored: `?` placeholders, BIGINT and NUMERIC columns read as numbers (as bun:sqlite reads INTEGER).
 */
export async function dbRows<T = Record<string, any>>(s: Services, query: string, ...args: unknown[]): Promise<T[]> {
  if (s.backend.kind === "sqlite") return s.backend.db.sqlite.query(query).all(...(args as never[])) as T[];
  return pgRows<T>(s.backend.sql, query, args);
}

/** The same, on the database a server started on `dataDir` used (it may have exited): its SQLite file, or its PostgreSQL database on the PostgreSQL pass. */
export async function storedRows<T = Record<string, any>>(dataDir: string, query: string, ...args: unknown[]): Promise<T[]> {
  const url = (await testBackendEnv(dataDir)).KEYBRAKE_DATABASE_URL;
  if (!url) {
    const db = new Database(join(dataDir, "keybrake.db"), { readonly: true });
    try {
      return db.query(query).all(...(args as never[])) as T[];
    } finally {
      db.close();
    }
  }
  const sql = openPostgres(url, { max: 1 });
  try {
    return await pgRows<T>(sql, query, args);
  } finally {
    await sql.close();
  }
}

async function pgRows<T>(sql: Pg, query: string, args: unknown[]): Promise<T[]> {
  let n = 0;
  const rows = await sql.unsafe(query.replace(/\?/g, () => `$${++n}`), args as never[]);
  // int8 (20) and numeric (1700, what sum() of a BIGINT gives) arrive as strings.
  const int8 = new Set((rows.columns as { name: string; type: number }[]).filter((c) => c.type === 20 || c.type === 1700).map((c) => c.name));
  return [...rows].map((r: Record<string, unknown>) => {
    for (const k of int8) if (r[k] !== null) r[k] = Number(r[k]);
    return r as T;
  });
}

export async function dbRow<T = Record<string, any>>(s: Services, query: string, ...args: unknown[]): Promise<T | undefined> {
  return (await dbRows<T>(s, query, ...args))[0];
}

export async function apiCall(base: string, method: string, path: string, body?: unknown, token: string | null = ADMIN_TOKEN) {
  const headers: Record<string, string> = {};
  if (token) headers.authorization = `Bearer ${token}`;
  let payload: string | undefined;
  if (body !== undefined) {
    headers["content-type"] = "application/json";
    payload = typeof body === "string" ? body : JSON.stringify(body);
  }
  const res = await fetch(base + path, { method, headers, body: payload });
  const text = await res.text();
  let json: any = text;
  try {
    json = JSON.parse(text);
  } catch {}
  return { status: res.status, json, headers: res.headers };
}

/** The seeds' POST /vault/keys body (Airflow), with overrides. */
export function seedKeyBody(over: Record<string, unknown> = {}) {
  return {
    vendor: "stripe",
    daily_usd_cap: 500.0,
    allowed_endpoints: ["POST /v1/payment_intents"],
    expires_in: "6h",
    agent_run_label: "airflow-billing/scheduled__2026-11-22",
    ...over,
  };
}

export interface Spawned {
  url: string;
  port: number;
  proc: ReturnType<typeof Bun.spawn>;
  output: () => string;
  /** SIGTERM, then the exit code. */
  stop(): Promise<number>;
}

const ROOT = join(import.meta.dir, "..");

/** The TCP port a process listens on, read from /proc (Linux): its socket inodes matched against the LISTEN table. */
export function listeningPort(pid: number): number | null {
  const inodes = new Set<string>();
  try {
    for (const fd of readdirSync(`/proc/${pid}/fd`)) {
      try {
        const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
        if (m) inodes.add(m[1]!);
      } catch {} // fd closed meanwhile
    }
    for (const table of ["tcp", "tcp6"]) {
      for (const line of readFileSync(`/proc/${pid}/net/${table}`, "utf8").split("\n").slice(1)) {
        const f = line.trim().split(/\s+/);
        if (f[3] === "0A" && inodes.has(f[9]!)) return parseInt(f[1]!.split(":")[1]!, 16);
      }
    }
  } catch {} // process gone
  return null;
}

/** Spawns `bun src/main.ts …` (or `cmd`) with a clean environment; output collects stdout and stderr. */
export function spawnProcess(env: Record<string, string>, cmd: string[] = [process.execPath, "src/main.ts", "serve"]) {
  const proc = Bun.spawn(cmd, {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? "", KEYBRAKE_HOST: "127.0.0.1", KEYBRAKE_PORT: "0", ...env },
    stdout: "pipe",
    stderr: "pipe",
  });
  let out = "";
  const drain = async (s: ReadableStream<Uint8Array>) => {
    const decoder = new TextDecoder();
    for await (const chunk of s) out += decoder.decode(chunk, { stream: true });
  };
  const drained = Promise.all([drain(proc.stdout as ReadableStream<Uint8Array>), drain(proc.stderr as ReadableStream<Uint8Array>)]);
  return { proc, output: () => out, drained };
}

/**
 * keybrake as its own process (`bun src/main.ts serve`, or a built binary), for restart and
 * multi-process tests. It listens on a port the OS assigns (KEYBRAKE_PORT=0) unless env names
 * one; the port is read back from the process itself, so no two tests can race for a port.
 */
export async function spawnKeybrake(env: Record<string, string>, cmd: string[] = [process.execPath, "src/main.ts", "serve"]): Promise<Spawned> {
  const { proc, output, drained } = spawnProcess({ ...(await testBackendEnv(env.KEYBRAKE_DATA_DIR)), ...env }, cmd);
  let port: number | null = null;
  for (let i = 0; i < 400 && port === null; i++) {
    if (proc.exitCode !== null) break;
    port = listeningPort(proc.pid);
    if (port === null) await Bun.sleep(25);
  }
  if (port === null) {
    proc.kill();
    await proc.exited;
    await drained;
    throw new Error(`keybrake did not listen: ${output()}`);
  }
  const url = `http://127.0.0.1:${port}`;
  // Listening comes a moment before the start-up work after it (first token, start line) is done.
  for (let i = 0; i < 200; i++) {
    try {
      if ((await fetch(url + "/healthz")).ok) break;
    } catch {}
    await Bun.sleep(25);
  }
  return {
    url,
    port,
    proc,
    output,
    async stop() {
      proc.kill("SIGTERM");
      const code = await proc.exited;
      await drained;
      return code;
    },
  };
}

/**
 * For a ledger read in another process: settlements commit just after their answers
 * (src/proxy/forward.ts), so this reads until `settled` says they are in, within `ms`, and returns
 * the last read for the caller to assert on (a lost settlement fails there, not here).
 */
export async function readSettled<T>(read: () => T | Promise<T>, settled: (v: T) => boolean, ms = 10_000): Promise<T> {
  const until = Date.now() + ms;
  let v = await read();
  while (!settled(v) && Date.now() < until) {
    await Bun.sleep(10);
    v = await read();
  }
  return v;
}
