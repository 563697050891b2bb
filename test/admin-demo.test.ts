import { afterAll, beforeAll, expect, test } from "bun:test";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { startDemo, type Demo } from "../src/demo.ts";

/**
 * `keybrake demo`: a newcomer's first minute. The demo must leave true data
 * behind (driven through the real proxy to the test suite's fake vendor) and
 * print a way in.
 */

let demo: Demo;
beforeAll(async () => {
  demo = await startDemo({ port: 0 });
});
afterAll(async () => {
  await demo?.stop();
  if (built) rmSync(dirname(built), { recursive: true, force: true });
});

const api = async (path: string) => {
  const res = await fetch(demo.url + path, { headers: { authorization: `Bearer ${demo.token}` } });
  expect(res.status).toBe(200);
  return (await res.json()) as any;
};
const outcomes = (rows: { outcome: string }[]) => rows.reduce<Record<string, number>>((m, r) => ((m[r.outcome] = (m[r.outcome] ?? 0) + 1), m), {});

test("the fan-out hit its cap: 17 × $29 forwarded against $500, the other 13 refused with cap_hit, nothing over", async () => {
  const rows = (await api(`/vault/audit?label=${encodeURIComponent(demo.labels.fanOut)}&limit=100`)).data;
  expect(outcomes(rows)).toEqual({ forwarded: 17, cap_hit: 13 });
  const key = (await api(`/vault/keys?label=${encodeURIComponent(demo.labels.fanOut)}`)).data[0];
  const detail = await api(`/vault/keys/${key.key_id}`);
  expect(detail).toMatchObject({ spent_today_usd: 493, reserved_usd: 0, spent_total_usd: 493 });
});

test("the revoked run's later calls were refused; denials and an unknown key are in the log; every vendor has calls", async () => {
  const revoked = (await api(`/vault/audit?label=${encodeURIComponent(demo.labels.revoked)}`)).data;
  expect(outcomes(revoked)).toEqual({ forwarded: 2, revoked: 2 });
  const keys = (await api(`/vault/keys?label=${encodeURIComponent(demo.labels.revoked)}&status=revoked`)).data;
  expect(keys).toHaveLength(2);
  const all = (await api(`/vault/audit?limit=1000`)).data;
  const seen = outcomes(all);
  expect(seen.endpoint_denied).toBe(2);
  expect(seen.invalid_key).toBe(1);
  expect(new Set(all.filter((r: any) => r.outcome === "forwarded").map((r: any) => r.vendor))).toEqual(new Set(["stripe", "twilio", "resend"]));
});

test("the printed token signs in to the admin pages, which show the runs", async () => {
  const login = await fetch(`${demo.adminUrl}/login`, {
    method: "POST",
    redirect: "manual",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({ token: demo.token }).toString(),
  });
  expect(login.status).toBe(303);
  const cookie = login.headers.get("set-cookie")!.split(";")[0]!;
  const keys = await (await fetch(`${demo.adminUrl}/keys?label=airflow-billing/*`, { headers: { cookie } })).text();
  expect(keys).toContain(demo.labels.fanOut);
  expect(keys).toContain("$493.00</strong>");
  expect(keys).not.toContain(demo.labels.revoked);
});

/** `keybrake demo` as a newcomer runs it: from a checkout, and as the single executable from an empty directory. */
const CLI: [name: string, command: () => string[], cwd: () => string][] = [
  ["from the checkout (npm run demo)", () => [process.execPath, "src/main.ts", "demo"], () => join(import.meta.dir, "..")],
  ["from the compiled binary, with nothing beside it", () => [binary(), "demo"], () => mkdtempSync(join(tmpdir(), "keybrake-demo-cwd-"))],
];

let built: string | undefined;
/** bun build --compile bundles what src/demo.ts imports (the fake vendor included). */
function binary(): string {
  if (built) return built;
  const out = join(mkdtempSync(join(tmpdir(), "keybrake-demo-bin-")), "keybrake");
  const build = Bun.spawnSync([process.execPath, "build", "src/main.ts", "--compile", "--outfile", out], { cwd: join(import.meta.dir, ".."), stderr: "pipe" });
  if (build.exitCode !== 0) throw new Error(build.stderr.toString());
  return (built = out);
}

for (const [name, command, cwd] of CLI) {
  test(`\`keybrake demo\` ${name}: prints the admin URL and a working token, cleans up on SIGTERM`, async () => {
    // Port 0: the OS picks a free one (a guessed port can be taken by another test's server), and the demo prints it.
    const proc = Bun.spawn(command(), { cwd: cwd(), env: { PATH: process.env.PATH ?? "", KEYBRAKE_PORT: "0" }, stdout: "pipe", stderr: "pipe" });
    let out = "";
    const decoder = new TextDecoder();
    for await (const chunk of proc.stdout as ReadableStream<Uint8Array>) {
      out += decoder.decode(chunk);
      if (out.includes("Press Ctrl-C")) break;
    }
    const adminUrl = /Admin pages:\s+(\S+)/.exec(out)?.[1];
    const token = /Management token:\s+(\S+)/.exec(out)?.[1];
    const dataDir = /Data \(temporary\):\s+(\S+)/.exec(out)?.[1];
    expect(adminUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/admin$/);
    const port = Number(new URL(adminUrl!).port);
    expect(port).toBeGreaterThan(0);
    expect(token).toStartWith("kbt_demo_");
    expect(out).toContain("charged 17 of 30 before its $500 cap");
    const keys = await fetch(`http://127.0.0.1:${port}/vault/keys`, { headers: { authorization: `Bearer ${token}` } });
    expect(((await keys.json()) as any).data.length).toBeGreaterThanOrEqual(7);
    proc.kill("SIGTERM");
    expect(await proc.exited).toBe(0);
    expect(existsSync(dataDir!)).toBe(false);
  }, 60_000);
}
