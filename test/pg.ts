/**
 * A throwaway PostgreSQL cluster for tests: initdb in a temp dir, loopback TCP on a free port,
 * its unix socket in the same dir, started once per test run (bun test runs every file in one
 * process) and stopped when the process exits. Each test file asks for its own database, so
 * files stay independent. A test that stops and restarts PostgreSQL starts its own cluster.
 *
 * fsync=off is safe here: a stopped server (even `-m immediate`) loses nothing the OS holds;
 * synchronous_commit stays on, since an immediate stop would otherwise drop the last commits.
 * initdb refuses to run as root: as root (CI, this machine) the cluster belongs to the
 * `postgres` user that Debian's package creates. KEYBRAKE_TEST_POSTGRES=required (set by
 * .ci/run) turns a missing PostgreSQL into a failure instead of a skip.
 */
import { spawn, spawnSync } from "node:child_process";
import { chmodSync, chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir, userInfo } from "node:os";
import { join } from "node:path";

export function pgBinDir(): string | null {
  if (process.env.KEYBRAKE_PG_BIN) return process.env.KEYBRAKE_PG_BIN;
  const root = "/usr/lib/postgresql";
  if (!existsSync(root)) return null;
  const versions = readdirSync(root).filter((v) => existsSync(join(root, v, "bin", "initdb"))).sort((a, b) => Number(b) - Number(a));
  return versions.length ? join(root, versions[0]!, "bin") : null;
}

/** True when PostgreSQL tests can run here; throws when CI requires them and they cannot. */
export function postgresAvailable(): boolean {
  const ok = pgBinDir() !== null;
  if (!ok && process.env.KEYBRAKE_TEST_POSTGRES === "required") {
    throw new Error("KEYBRAKE_TEST_POSTGRES=required but no PostgreSQL server binaries found (apt-get install postgresql)");
  }
  return ok;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

export interface PgCluster {
  port: number;
  dir: string;
  /** A URL for a database of this cluster (created on first use by createDatabase). */
  url(db: string): string;
  createDatabase(name: string): string;
  /** Stops the server at once (like a crash or a network cut for the clients). */
  stop(): void;
  start(): void;
  destroy(): void;
}

const asRoot = () => userInfo().uid === 0;

function run(bin: string, args: string[], quiet = false): void {
  const cmd = asRoot() ? "runuser" : bin;
  const full = asRoot() ? ["-u", "postgres", "--", bin, ...args] : args;
  const r = spawnSync(cmd, full, { encoding: "utf8", cwd: "/" });
  if (r.status !== 0 && !quiet) throw new Error(`${bin} ${args.join(" ")} failed: ${r.stderr || r.stdout}`);
}

export async function startCluster(): Promise<PgCluster> {
  const bin = pgBinDir();
  if (!bin) throw new Error("PostgreSQL server binaries not found");
  const dir = mkdtempSync(join(tmpdir(), "keybrake-pg-"));
  chmodSync(dir, 0o700);
  if (asRoot()) {
    const pw = spawnSync("id", ["-u", "postgres"], { encoding: "utf8" });
    const gid = spawnSync("id", ["-g", "postgres"], { encoding: "utf8" });
    chownSync(dir, Number(pw.stdout.trim()), Number(gid.stdout.trim()));
  }
  const data = join(dir, "data");
  const user = asRoot() ? "postgres" : userInfo().username;
  run(join(bin, "initdb"), ["-D", data, "-A", "trust", "-U", user, "-E", "UTF8", "--no-sync"]);
  const port = await freePort();
  const opts = `-c listen_addresses=127.0.0.1 -p ${port} -k ${dir} -c fsync=off -c full_page_writes=off -c max_connections=200`;
  const psql = join(bin, "psql");
  const cluster: PgCluster = {
    port,
    dir,
    url: (db) => `postgres://${user}@127.0.0.1:${port}/${db}`,
    createDatabase(name) {
      run(psql, ["-h", dir, "-p", String(port), "-U", user, "-d", "postgres", "-c", `CREATE DATABASE "${name}"`]);
      return cluster.url(name);
    },
    stop: () => run(join(bin, "pg_ctl"), ["-D", data, "-m", "immediate", "-w", "stop"], true),
    start: () => run(join(bin, "pg_ctl"), ["-D", data, "-o", opts, "-l", join(dir, "log"), "-w", "start"]),
    destroy() {
      cluster.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  cluster.start();
  // A watchdog outlives this process: when it is gone (exited, crashed or killed), the cluster is
  // stopped and its directory removed, so no test run ever leaves a PostgreSQL behind.
  const watchdog = `while [ -d /proc/${process.pid} ]; do sleep 0.5; done; ${join(bin, "pg_ctl")} -D ${data} -m immediate stop >/dev/null 2>&1; rm -rf ${dir}`;
  const child = spawn(asRoot() ? "runuser" : "sh", asRoot() ? ["-u", "postgres", "--", "sh", "-c", watchdog] : ["-c", watchdog], { detached: true, stdio: "ignore", cwd: "/" });
  child.unref();
  process.on("exit", () => cluster.destroy());
  return cluster;
}

let shared: Promise<PgCluster> | null = null;
let dbCount = 0;

/** A fresh database on the run's shared cluster. */
export async function freshDatabase(prefix = "kb"): Promise<string> {
  shared ??= startCluster();
  const c = await shared;
  return c.createDatabase(`${prefix}_${process.pid}_${++dbCount}`);
}

/**
 * The ledger (or any object) with each method call started only once the one before is done: on a
 * PgLedger, groups of one, so every write takes the per-write path the batch is compared with.
 */
export function serially<T extends object>(ledger: T): T {
  let last: Promise<unknown> = Promise.resolve();
  return new Proxy(ledger, {
    get(target, prop) {
      const v = (target as any)[prop];
      if (typeof v !== "function") return v;
      return (...args: unknown[]) => {
        const next = last.then(() => v.apply(target, args));
        last = next.catch(() => {});
        return next;
      };
    },
  });
}
