import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createApp } from "../src/app.ts";
import { loadConfig } from "../src/config.ts";
import { createServices, MAX_PROXY_BODY_BYTES, type Services } from "../src/services.ts";

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

/** The real server, in this process, on a loopback port. */
export async function startKeybrake(env: Record<string, string> = {}, opts: { dataDir?: string; keepData?: boolean } = {}): Promise<Running> {
  const dataDir = opts.dataDir ?? tempDir();
  const config = loadConfig({ KEYBRAKE_DATA_DIR: dataDir, KEYBRAKE_ADMIN_TOKEN: ADMIN_TOKEN, KEYBRAKE_HOST: "127.0.0.1", KEYBRAKE_PORT: "0", ...env });
  const services = createServices(config);
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
      services.db.sqlite.close();
      if (!opts.keepData && !opts.dataDir) rmSync(dataDir, { recursive: true, force: true });
    },
  };
  return running;
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
  proc: ReturnType<typeof Bun.spawn>;
  output: () => string;
  stop(): Promise<void>;
}

/** keybrake as its own process (`bun src/main.ts serve`, or a built binary), for restart and multi-process tests. */
export async function spawnKeybrake(env: Record<string, string>, cmd: string[] = [process.execPath, "src/main.ts", "serve"]): Promise<Spawned> {
  // The random port can be taken by another test run on this machine: try a few.
  for (let attempt = 1; ; attempt++) {
    try {
      return await spawnOnRandomPort(env, cmd);
    } catch (e) {
      if (attempt >= 3 || !/in use/.test(String((e as Error).message))) throw e;
    }
  }
}

async function spawnOnRandomPort(env: Record<string, string>, cmd: string[]): Promise<Spawned> {
  const port = 20000 + Math.floor(Math.random() * 20000);
  const proc = Bun.spawn(cmd, {
    cwd: join(import.meta.dir, ".."),
    env: { PATH: process.env.PATH ?? "", KEYBRAKE_HOST: "127.0.0.1", KEYBRAKE_PORT: String(port), ...env },
    stdout: "pipe",
    stderr: "pipe",
  });
  let out = "";
  const drain = async (s: ReadableStream<Uint8Array>) => {
    for await (const chunk of s) out += new TextDecoder().decode(chunk);
  };
  void drain(proc.stdout as ReadableStream<Uint8Array>);
  void drain(proc.stderr as ReadableStream<Uint8Array>);
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 200; i++) {
    try {
      if ((await fetch(url + "/healthz")).ok) break;
    } catch {}
    if (proc.exitCode !== null) throw new Error(`keybrake exited: ${out}`);
    await Bun.sleep(50);
  }
  return {
    url,
    proc,
    output: () => out,
    async stop() {
      proc.kill("SIGTERM");
      await proc.exited;
    },
  };
}
