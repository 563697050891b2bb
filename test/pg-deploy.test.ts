/**
 * deploy/ (SPEC §8): the compose file and the Kubernetes manifests parse and reference what a
 * replicated Keybrake needs; the compose topology — PostgreSQL, two replicas, deploy/nginx.conf in
 * front — is reproduced with real processes (Docker is not available here): calls through the load
 * balancer reach both replicas and together spend exactly the cap.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawn, type Subprocess } from "bun";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { migratePostgres, openPostgres, type Pg } from "../src/db/pg.ts";
import { startFakeVendor, type FakeVendor } from "./fake-vendor.ts";
import { tempDir } from "./helpers.ts";
import { freshDatabase, postgresAvailable } from "./pg.ts";
import { proxied } from "./proxy-setup.ts";

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
      expect(s.healthcheck.test.join(" ")).toContain("/healthz");
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

describe.skipIf(!postgresAvailable() || !nginxAvailable)("the compose topology with real processes", () => {
  let fake: FakeVendor;
  let sql: Pg;
  const procs: Subprocess[] = [];
  let lb = "";

  beforeAll(async () => {
    fake = await startFakeVendor();
    const url = await freshDatabase("deploy");
    sql = openPostgres(url);
    await migratePostgres(sql);
    const replicaUrls: string[] = [];
    for (let i = 0; i < 2; i++) {
      const p = spawn([process.execPath, join(import.meta.dir, "pg-replica-server.ts"), url, fake.url, fake.credentials.stripe], { stdout: "pipe", stderr: "inherit" });
      procs.push(p);
      const reader = p.stdout.getReader();
      let out = "";
      while (!out.includes("\n")) {
        const { value, done } = await reader.read();
        if (done) throw new Error("replica exited before listening");
        out += new TextDecoder().decode(value);
      }
      replicaUrls.push(out.trim());
    }
    // deploy/nginx.conf as compose runs it, with the service names resolved to these processes.
    const dir = tempDir("keybrake-lb-");
    mkdirSync(join(dir, "logs"));
    const port = await freePort();
    const conf = read("nginx.conf")
      .replace("keybrake-1:8080", new URL(replicaUrls[0]!).host)
      .replace("keybrake-2:8080", new URL(replicaUrls[1]!).host)
      .replace("listen 8080;", `listen 127.0.0.1:${port};`)
      .replace("http {", `http {\n  client_body_temp_path ${dir}/body; proxy_temp_path ${dir}/proxy; fastcgi_temp_path ${dir}/fcgi; uwsgi_temp_path ${dir}/uwsgi; scgi_temp_path ${dir}/scgi;`);
    writeFileSync(join(dir, "nginx.conf"), conf);
    const nginx = Bun.which("nginx") ?? "/usr/sbin/nginx";
    procs.push(spawn([nginx, "-p", dir, "-c", join(dir, "nginx.conf"), "-g", `daemon off; pid ${dir}/nginx.pid; error_log ${dir}/logs/error.log warn;`], { stdout: "inherit", stderr: "inherit" }));
    lb = `http://127.0.0.1:${port}`;
    for (let i = 0; i < 200; i++) {
      if (await fetch(lb + "/v1/charges", { method: "POST" }).then((r) => r.status !== 502, () => false)) break;
      await Bun.sleep(10); // waiting for nginx to listen (a condition, bounded), not a timing assertion
    }
  });
  afterAll(async () => {
    for (const p of procs) p.kill("SIGKILL");
    await sql?.close();
    await fake?.stop();
  });

  test("calls through the load balancer reach both replicas and spend exactly the cap", async () => {
    const id = `key_lb_${process.pid}`;
    const vaultKey = `vk_${id}_0123456789abcdef0123456789abcdef`;
    await sql`INSERT INTO vault_keys (id, key_hash, key_hint, vendor, daily_cap_micros, allowed_endpoints, agent_run_label, expires_at, created_at)
              VALUES (${id}, ${new Bun.CryptoHasher("sha256").update(vaultKey).digest("hex")}, 'vk_', 'stripe', ${25_000_000}, '["POST /v1/payment_intents"]', 'deploy/lb',
                      ${Date.now() + 3600_000}, ${Date.now()})`;
    const results = await Promise.all(Array.from({ length: 40 }, () => proxied(lb, vaultKey, "POST", "/v1/payment_intents", { amount: "100", currency: "usd" })));
    expect(results.filter((r) => r.status === 200).length).toBe(25);
    expect(results.filter((r) => r.status === 429).length).toBe(15);
    expect(new Set(results.map((r) => r.headers.get("x-test-replica"))).size).toBe(2);
    expect(fake.executed.filter((c) => c.path === "/v1/payment_intents").length).toBe(25);
  }, 30_000);
});
