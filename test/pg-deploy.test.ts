/**
 * deploy/ (SPEC §8): the compose file and the Kubernetes manifests parse and reference what a
 * replicated Keybrake needs; the compose topology — PostgreSQL, two `keybrake serve` replicas with
 * compose's environment, deploy/nginx.conf in front — is reproduced with real processes (Docker is
 * not available here): calls through the load balancer reach both replicas and together spend
 * exactly the cap, the admin token works through it, and an admin session is valid on both.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawn, type Subprocess } from "bun";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { startFakeVendor, type FakeVendor } from "./fake-vendor.ts";
import { ADMIN_TOKEN, apiCall, readSettled, seedKeyBody, tempDir } from "./helpers.ts";
import { freshDatabase, postgresAvailable } from "./pg.ts";
import { charge, REPLICA_MASTER_KEY, startReplicas, type Replica } from "./replica-set.ts";

const DEPLOY = join(import.meta.dir, "..", "deploy");
const read = (f: string) => readFileSync(join(DEPLOY, f), "utf8");
const nginxAvailable = Bun.which("nginx") !== null || Bun.which("nginx", { PATH: "/usr/sbin:/usr/bin" }) !== null;
if (!nginxAvailable && process.env.KEYBRAKE_TEST_POSTGRES === "required") throw new Error("nginx is required for test/pg-deploy.test.ts (apt-get install nginx)");

describe("deploy/ files", () => {
  test("compose: PostgreSQL, two replicas sharing one database URL, admin token and master key, and nginx in front", () => {
    const c = Bun.YAML.parse(read("compose.yaml")) as any;
    expect(Object.keys(c.services).sort()).toEqual(["keybrake-1", "keybrake-2", "lb", "postgres"]);
    for (const name of ["keybrake-1", "keybrake-2"]) {
      const s = c.services[name];
      expect(s.environment.KEYBRAKE_DATABASE_URL).toMatch(/^postgres:\/\/keybrake:\$\{POSTGRES_PASSWORD[^}]*\}@postgres:5432\/keybrake$/);
      expect(Object.keys(s.environment)).toEqual(expect.arrayContaining(["KEYBRAKE_ADMIN_TOKEN", "KEYBRAKE_MASTER_KEY"]));
      expect(s.depends_on.postgres.condition).toBe("service_healthy");
      // The image's entrypoint is keybrake itself, and it has no curl (Dockerfile).
      expect(s.command).toEqual(["serve"]);
      expect(s.healthcheck.test).toEqual(["CMD", "/usr/local/bin/keybrake", "healthcheck"]);
    }
    expect(c.services.lb.volumes).toContain("./nginx.conf:/etc/nginx/nginx.conf:ro");
    const conf = read("nginx.conf");
    expect(conf).toContain("server keybrake-1:8080");
    expect(conf).toContain("server keybrake-2:8080");
    expect(conf).toContain("proxy_next_upstream off"); // a call that may have moved money is never sent twice
  });

  test("kubernetes: Deployment with readiness on /healthz and Secret references, a Service and a PodDisruptionBudget that select its pods", () => {
    const docs = Bun.YAML.parse(read("k8s/keybrake.yaml")) as any[];
    const kinds = Object.fromEntries(docs.map((d) => [d.kind, d]));
    expect(Object.keys(kinds).sort()).toEqual(["Deployment", "PodDisruptionBudget", "Service"]);
    const dep = kinds.Deployment;
    const labels = dep.spec.template.metadata.labels;
    expect(dep.spec.replicas).toBeGreaterThanOrEqual(2);
    expect(dep.spec.selector.matchLabels).toEqual(labels);
    expect(kinds.Service.spec.selector).toEqual(labels);
    expect(kinds.PodDisruptionBudget.spec.selector.matchLabels).toEqual(labels);
    expect(kinds.PodDisruptionBudget.spec.minAvailable).toBeGreaterThanOrEqual(1);
    const container = dep.spec.template.spec.containers[0];
    expect(container.readinessProbe.httpGet.path).toBe("/healthz");
    const fromSecret = Object.fromEntries(container.env.filter((e: any) => e.valueFrom).map((e: any) => [e.name, e.valueFrom.secretKeyRef]));
    expect(Object.keys(fromSecret).sort()).toEqual(["KEYBRAKE_ADMIN_TOKEN", "KEYBRAKE_DATABASE_URL", "KEYBRAKE_MASTER_KEY"]);
    const secret = Bun.YAML.parse(read("k8s/secret.example.yaml")) as any;
    for (const ref of Object.values(fromSecret) as { name: string; key: string }[]) {
      expect(ref.name).toBe(secret.metadata.name);
      expect(Object.keys(secret.stringData)).toContain(ref.key);
    }
    // The grace period outlasts KEYBRAKE_SHUTDOWN_GRACE, so calls in flight settle before SIGKILL.
    const grace = container.env.find((e: any) => e.name === "KEYBRAKE_SHUTDOWN_GRACE").value;
    expect(dep.spec.template.spec.terminationGracePeriodSeconds).toBeGreaterThan(parseInt(grace, 10));
  });
});

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const srv = createServer().listen(0, "127.0.0.1", () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

/** compose's `${VAR}` / `${VAR:-default}` / `${VAR:?message}` substitution, from `vars`. */
function interpolate(value: string, vars: Record<string, string>): string {
  return value.replace(/\$\{(\w+)(?::[-?]([^}]*))?\}/g, (_, name: string, fallback?: string) => vars[name] ?? fallback ?? "");
}

/** Proxied calls this replica handled, by its own /metrics. */
async function proxiedCalls(r: Replica): Promise<number> {
  const text = (await apiCall(r.url, "GET", "/metrics")).json as string;
  return text.split("\n").filter((l) => l.startsWith("keybrake_proxy_requests_total{")).reduce((n, l) => n + Number(l.split(" ").pop()), 0);
}

describe.skipIf(!postgresAvailable() || !nginxAvailable)("the compose topology with real processes", () => {
  let fake: FakeVendor;
  let replicas: Replica[] = [];
  let nginx: Subprocess | null = null;
  let dir = "";
  let lb = "";

  beforeAll(async () => {
    fake = await startFakeVendor();
    const port = await freePort();
    lb = `http://127.0.0.1:${port}`;
    // compose's replica environment as `docker compose up` resolves it, except what only the
    // container network gives: the database host and a port per replica (here they share one host).
    const composed = (Bun.YAML.parse(read("compose.yaml")) as any).services["keybrake-1"].environment as Record<string, string>;
    const vars = { POSTGRES_PASSWORD: "unused-trust-auth", KEYBRAKE_ADMIN_TOKEN: ADMIN_TOKEN, KEYBRAKE_MASTER_KEY: REPLICA_MASTER_KEY, KEYBRAKE_PUBLIC_URL: lb };
    const env = Object.fromEntries(Object.entries(composed).map(([k, v]) => [k, interpolate(String(v), vars)]));
    Object.assign(env, { KEYBRAKE_DATABASE_URL: await freshDatabase("deploy"), KEYBRAKE_HOST: "127.0.0.1", KEYBRAKE_PORT: "0", KEYBRAKE_STRIPE_BASE_URL: fake.url });
    replicas = await startReplicas(2, env);
    // deploy/nginx.conf as compose runs it, with the service names resolved to these processes.
    dir = tempDir("keybrake-lb-");
    mkdirSync(join(dir, "logs"));
    const conf = read("nginx.conf")
      .replace("keybrake-1:8080", new URL(replicas[0]!.url).host)
      .replace("keybrake-2:8080", new URL(replicas[1]!.url).host)
      .replace("listen 8080;", `listen 127.0.0.1:${port};`)
      .replace("http {", `http {\n  client_body_temp_path ${dir}/body; proxy_temp_path ${dir}/proxy; fastcgi_temp_path ${dir}/fcgi; uwsgi_temp_path ${dir}/uwsgi; scgi_temp_path ${dir}/scgi;`);
    writeFileSync(join(dir, "nginx.conf"), conf);
    const bin = Bun.which("nginx") ?? "/usr/sbin/nginx";
    nginx = spawn([bin, "-p", dir, "-c", join(dir, "nginx.conf"), "-g", `daemon off; pid ${dir}/nginx.pid; error_log ${dir}/logs/error.log warn;`], { stdout: "ignore", stderr: "ignore" });
    // Waiting for nginx to listen (a condition, bounded), not a timing assertion.
    await readSettled(() => fetch(lb + "/healthz").then((r) => r.status, () => 0), (s) => s === 200);
  }, 30_000);
  afterAll(async () => {
    // SIGTERM, not SIGKILL: nginx's master then stops its workers (a killed master orphans them).
    nginx?.kill("SIGTERM");
    await nginx?.exited;
    await Promise.all(replicas.map((r) => r.kill()));
    await fake?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test("the admin token works through the load balancer, whichever replica answers; the vendor secret set through it serves both", async () => {
    expect((await apiCall(lb, "PUT", "/vendors/stripe", { secret_key: fake.credentials.stripe })).status).toBe(200);
    const listed = await Promise.all([0, 1].map(() => apiCall(lb, "GET", "/vault/keys")));
    expect(listed.map((r) => r.status)).toEqual([200, 200]);
    expect((await apiCall(lb, "GET", "/vault/keys", undefined, "kbt_not_a_token_0123456789abcdef0123")).status).toBe(401);
  });

  test("calls through the load balancer reach both replicas and spend exactly the cap", async () => {
    const issued = await apiCall(lb, "POST", "/vault/keys", seedKeyBody({ daily_usd_cap: 25, agent_run_label: "deploy/lb" }));
    expect([issued.status, issued.json.proxy_base_url]).toEqual([201, lb]); // KEYBRAKE_PUBLIC_URL from compose
    const before = await Promise.all(replicas.map(proxiedCalls));
    const results = await Promise.all(Array.from({ length: 40 }, () => charge(lb, issued.json.vault_key)));
    expect(results.filter((r) => r === "ok").length).toBe(25);
    expect(results.filter((r) => r === "429 cap_exceeded").length).toBe(15);
    expect(fake.executed.filter((c) => c.path === "/v1/payment_intents").length).toBe(25);
    const handled = (await Promise.all(replicas.map(proxiedCalls))).map((n, i) => n - before[i]!);
    expect(handled.every((n) => n > 0) && handled[0]! + handled[1]! === 40).toBe(true);
    const settled = await readSettled(() => apiCall(lb, "GET", `/vault/keys/${issued.json.key_id}`).then((r) => r.json), (k) => k.reserved_usd === 0);
    expect([settled.spent_today_usd, settled.remaining_today_usd]).toEqual([25, 0]);
  }, 30_000);

  test("an admin session signed in through the load balancer is valid on both replicas", async () => {
    const login = await fetch(lb + "/admin/login", {
      method: "POST",
      redirect: "manual",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ token: ADMIN_TOKEN }).toString(),
    });
    expect(login.status).toBe(303);
    const cookie = login.headers.get("set-cookie")!.split(";")[0]!;
    const pages = await Promise.all(replicas.map((r) => fetch(r.url + "/admin/keys", { redirect: "manual", headers: { cookie } })));
    expect(pages.map((p) => p.status)).toEqual([200, 200]);
    expect((await fetch(replicas[0]!.url + "/admin/keys", { redirect: "manual", headers: { cookie: "kb_session=forged" } })).status).toBe(303);
  });
});
