/**
 * The orchestrator recipes in examples/, run against a real Keybrake and the fake vendor.
 *
 * The orchestrators themselves are not installable here, so each test plays the
 * orchestrator's part as thinly as it can and runs the recipe's own code for the rest:
 * Python task bodies through Debian's /usr/bin/python3, the Argo and Kestra steps as the
 * shell scripts and HTTP requests written in their YAML (parsed, templated, executed), the
 * Windmill scripts' and Temporal activities' own functions in Bun.
 *
 * Every run is the same story: a $100 budget, customers at $29 (Kestra's seed: $29.99), so
 * three are charged and the rest are cap hits that are reported cleanly and never retried;
 * the audit log holds exactly those calls under the run's label; the key ends revoked.
 */
import { asyncLocalStorage, type Context } from "@temporalio/activity";
import { afterAll, beforeAll, beforeEach, describe, expect, spyOn, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ADMIN_TOKEN } from "./helpers.ts";
import { proxied, startProxyStack } from "./proxy-setup.ts";

const ROOT = join(import.meta.dir, "..");
const EXAMPLES = join(ROOT, "examples");
const PYTHON = "/usr/bin/python3"; // Debian's, where apt put python3-stripe and python3-httpx
const CUSTOMERS = ["cus_001", "cus_002", "cus_003", "cus_004", "cus_005"];

let stack: Awaited<ReturnType<typeof startProxyStack>>;
/** Each orchestrator's issuer token, minted with exactly the policy examples/README.md shows for it. */
const TOKENS: Record<string, string> = {};
// The TypeScript recipes read these, as they would on a worker; put back afterwards.
const savedEnv = { KEYBRAKE_URL: process.env.KEYBRAKE_URL, KEYBRAKE_API_KEY: process.env.KEYBRAKE_API_KEY };
beforeAll(async () => {
  await requireDebianTools();
  stack = await startProxyStack();
  await scopedTokensAndBudgetsFromReadme();
  process.env.KEYBRAKE_URL = stack.kb.url;
  process.env.KEYBRAKE_API_KEY = TOKENS.temporal!; // the Temporal TypeScript activities read it from the worker's env
});

/** The README's `keybrake token create --role issuer --policy …` lines and budget loop, done through the API. */
async function scopedTokensAndBudgetsFromReadme() {
  const readme = readFileSync(join(EXAMPLES, "README.md"), "utf8");
  for (const [, name, policy] of readme.matchAll(/^keybrake token create --name (\S+) --role issuer --policy '(.+)'$/gm)) {
    const r = await stack.kb.api("POST", "/tokens", { name, role: "issuer", policy: JSON.parse(policy!) });
    expect(r.status).toBe(201);
    TOKENS[name!] = r.json.token;
  }
  expect(Object.keys(TOKENS).sort()).toEqual(["airflow", "argo", "kestra", "temporal", "windmill"]);
  const loop = /^for prefix in (.+); do$/m.exec(readme)![1]!.split(" ");
  const cap = Number(/daily_usd_cap\\": (\d+)/.exec(readme)![1]);
  for (const prefix of loop) {
    const r = await stack.kb.api("POST", "/budgets", { name: `${prefix.slice(0, -1)} daily`, label_prefix: prefix, daily_usd_cap: cap });
    expect(r.status).toBe(201);
  }
}
afterAll(async () => {
  for (const [name, value] of Object.entries(savedEnv)) {
    if (value === undefined) delete process.env[name];
    else process.env[name] = value;
  }
  await stack.stop();
});
beforeEach(() => stack.fake.reset());

// ---------------------------------------------------------------------------
// What every run must leave behind
// ---------------------------------------------------------------------------

const charges = () => stack.fake.executed.filter((c) => c.method === "POST" && c.path === "/v1/payment_intents");

async function auditOf(label: string): Promise<any[]> {
  const r = await stack.kb.api("GET", `/vault/audit?label=${encodeURIComponent(label)}&limit=1000`);
  expect(r.status).toBe(200);
  return r.json.data;
}

function outcomes(rows: any[]): Record<string, number> {
  const n: Record<string, number> = {};
  for (const row of rows) n[row.outcome] = (n[row.outcome] ?? 0) + 1;
  return n;
}

/** The run's keys are all revoked, and the vault key is refused from now on. */
async function expectRunRevoked(label: string, vaultKey: string) {
  const keys = (await stack.kb.api("GET", `/vault/keys?label=${encodeURIComponent(label)}`)).json.data;
  expect(keys.length).toBeGreaterThan(0);
  for (const k of keys) {
    expect(k.revoked_at).toBeString();
    // The run's budget is its lifetime cap too, so a run crossing UTC midnight cannot spend it twice.
    expect(k.total_usd_cap).toBe(k.daily_usd_cap);
  }
  const after = await proxied(stack.kb.url, vaultKey, "POST", "/v1/payment_intents", { amount: "100", currency: "usd" });
  expect(after.status).toBe(401);
  expect(after.headers.get("x-keybrake-error")).toBe("key_revoked");
}

/** N charged, the rest cap hits that never reached the vendor and were not retried. */
async function expectCappedRun(label: string, opts: { charged: number; capHits: number; idempotencyPrefix: string; replayed?: number }) {
  expect(charges()).toHaveLength(opts.charged);
  expect(stack.fake.calls).toHaveLength(opts.charged); // cap hits and replays never reach the vendor
  const rows = await auditOf(label);
  const expected: Record<string, number> = { forwarded: opts.charged, cap_hit: opts.capHits };
  if (opts.replayed) expected.replayed = opts.replayed;
  // One cap_hit row per customer: a retried cap hit would have left more.
  expect(outcomes(rows)).toEqual(expected);
  for (const row of rows.filter((r) => r.outcome === "forwarded")) {
    expect(row.agent_run_label).toBe(label);
    expect(row.vendor_object_id).toStartWith("pi_");
    expect(row.vendor_request_id).toBeString();
    expect(row.idempotency_key).toStartWith(opts.idempotencyPrefix);
  }
  return rows;
}

// ---------------------------------------------------------------------------
// Airflow: the DAG file's task functions, mapped in parallel as Airflow would
// ---------------------------------------------------------------------------

describe("Airflow (examples/airflow/billing_dag.py)", () => {
  test("$100 budget, 5 mapped charges: 3 charged, 2 skipped as cap hits, a retry replayed, the run revoked", async () => {
    const runId = "scheduled__2026-11-22T00:00:00+00:00";
    const label = `airflow-billing/${runId}`;
    const r = await python(AIRFLOW_RUN, { cwd: join(EXAMPLES, "airflow"), args: [runId, JSON.stringify(CUSTOMERS)], env: { KEYBRAKE_API_KEY: TOKENS.airflow! } });
    expect(r.code).toBe(0);
    const run = JSON.parse(r.stdout);

    expect(run.customers).toEqual(CUSTOMERS);
    const charged = run.results.filter((x: any) => x.payment_intent);
    const skipped = run.results.filter((x: any) => x.skipped);
    expect(charged).toHaveLength(3);
    expect(skipped).toHaveLength(2);
    for (const s of skipped) expect(s.skipped).toContain("spend cap reached");
    expect(run.retry.payment_intent).toBe(charged[0].payment_intent); // same PaymentIntent, not a second charge
    expect(run.revoked).toBe(1);

    await expectCappedRun(label, { charged: 3, capHits: 2, replayed: 1, idempotencyPrefix: `${runId}-cus_` });
    await expectRunRevoked(label, run.vault_key);
  }, 30_000);
});

const AIRFLOW_RUN = String.raw`
import json, sys
from concurrent.futures import ThreadPoolExecutor
import billing_dag as dag

run_id, customers = sys.argv[1], json.loads(sys.argv[2])
context = {"run_id": run_id, "params": {"budget_usd": 100.0, "customer_ids": customers}}

vault_key = dag.issue_vault_key(**context)
customer_ids = dag.get_customer_ids(**context)

def mapped_task(customer_id):  # charge_customer.partial(vault_key=...).expand(customer_id=...)
    try:
        return dag.charge_customer(customer_id=customer_id, vault_key=vault_key, **context)
    except dag.AirflowSkipException as e:
        return {"customer_id": customer_id, "skipped": str(e)}

with ThreadPoolExecutor(len(customer_ids)) as pool:
    results = list(pool.map(mapped_task, customer_ids))
first = next(r for r in results if "payment_intent" in r)
retry = dag.charge_customer(customer_id=first["customer_id"], vault_key=vault_key, **context)  # an Airflow retry
revoked = dag.revoke_vault_key(**context)  # the teardown
print(json.dumps({"vault_key": vault_key, "customers": customer_ids, "results": results, "retry": retry, "revoked": revoked}))
`;

// ---------------------------------------------------------------------------
// Temporal: Python workflow + activities, TypeScript activities
// ---------------------------------------------------------------------------

describe("Temporal, Python (examples/temporal/python)", () => {
  test("BillingWorkflow.run: 3 charged, 2 cap hits reported and not retried, key revoked in finally", async () => {
    const workflowId = "billing-2026-11-22";
    const label = `temporal-billing/${workflowId}`;
    const r = await python(TEMPORAL_RUN, { cwd: join(EXAMPLES, "temporal/python"), args: [workflowId, JSON.stringify(CUSTOMERS), "none"], env: { KEYBRAKE_API_KEY: TOKENS.temporal! } });
    expect(r.code).toBe(0);
    const run = JSON.parse(r.stdout);

    expect(run.result).toEqual({ charged: CUSTOMERS.slice(0, 3), cap_hit: CUSTOMERS.slice(3) });
    // Each charge ran once: cap hits are non-retryable, so the retry policy never re-ran them.
    expect(run.attempts.charge_customer).toBe(5);
    expect(run.activities.at(-1)).toBe("revoke_vault_key");
    await expectCappedRun(label, { charged: 3, capHits: 2, idempotencyPrefix: `${workflowId}-cus_` });
    await expectRunRevoked(label, run.vault_key);
  }, 30_000);

  test("a cancelled run still revokes its key", async () => {
    const workflowId = "billing-cancelled";
    const label = `temporal-billing/${workflowId}`;
    const r = await python(TEMPORAL_RUN, { cwd: join(EXAMPLES, "temporal/python"), args: [workflowId, JSON.stringify(CUSTOMERS), "cancel-at-2"], env: { KEYBRAKE_API_KEY: TOKENS.temporal! } });
    expect(r.code).toBe(0);
    const run = JSON.parse(r.stdout);
    expect(run.outcome).toBe("CancelledError");
    expect(run.activities).toEqual(["issue_vault_key", "charge_customer", "charge_customer", "revoke_vault_key"]);
    expect(charges()).toHaveLength(1);
    await expectRunRevoked(label, run.vault_key);
  }, 30_000);
});

/**
 * Drives workflows.BillingWorkflow.run with a stand-in for Temporal's execute_activity:
 * it runs the real activity, retries per the activity's RetryPolicy unless the error is
 * non-retryable, and wraps the final error in ActivityError, as the SDK does.
 */
const TEMPORAL_RUN = String.raw`
import asyncio, json, logging, sys
from collections import Counter
from types import SimpleNamespace
import activities, workflows

workflow_id, customers, mode = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
info = lambda: SimpleNamespace(workflow_id=workflow_id)
activities.activity.info = info
called, attempts, keys = [], Counter(), []

async def execute_activity(fn, args, retry_policy, **_options):
    called.append(fn.__name__)
    if mode == "cancel-at-2" and fn is activities.charge_customer and called.count("charge_customer") == 2:
        raise asyncio.CancelledError()  # the workflow is cancelled while awaiting this activity
    for attempt in range(1, retry_policy.maximum_attempts + 1):
        attempts[fn.__name__] += 1
        try:
            result = await fn(*args)
            if fn is activities.issue_vault_key:
                keys.append(result)
            return result
        except Exception as e:
            if getattr(e, "non_retryable", False) or attempt == retry_policy.maximum_attempts:
                raise workflows.ActivityError("activity task failed") from e

workflows.workflow.info = info
workflows.workflow.execute_activity = execute_activity
workflows.workflow.logger = logging.getLogger("workflow")
params = workflows.BillingParams(budget_usd=100.0, invoices=[workflows.Invoice(c, 2900) for c in customers])
out = {"activities": called, "attempts": attempts}
try:
    result = asyncio.run(workflows.BillingWorkflow().run(params))
    out["result"] = {"charged": result.charged, "cap_hit": result.cap_hit}
except asyncio.CancelledError:
    out["outcome"] = "CancelledError"
out["vault_key"] = keys[0]
print(json.dumps(out))
`;

describe("Temporal, TypeScript (examples/temporal/typescript/activities.ts)", () => {
  test("activities in an activity context: 3 charged, 2 non-retryable KeybrakeCapHit failures, revoked", async () => {
    const act = await import("../examples/temporal/typescript/activities.ts");
    const workflowId = "billing-ts-2026-11-22";
    const label = act.runLabel(workflowId);
    // A Temporal worker cannot run here (@temporalio/testing pulls in a native bundler that breaks
    // `npm ci`), so each call runs in the activity context the worker would set: the same
    // AsyncLocalStorage that Context.current() reads, holding the fields these activities use.
    const context = { info: { workflowExecution: { workflowId, runId: "run-1" }, attempt: 1 } } as unknown as Context;
    const inActivity = <A extends unknown[], R>(fn: (...args: A) => Promise<R>, ...args: A): Promise<R> =>
      asyncLocalStorage.run(context, () => fn(...args));

    const vaultKey = await inActivity(act.issueVaultKey, workflowId, 100);
    const settled = await Promise.allSettled(CUSTOMERS.map((c) => inActivity(act.chargeCustomer, c, 2900, vaultKey)));
    const ok = settled.filter((s) => s.status === "fulfilled").map((s) => (s as PromiseFulfilledResult<any>).value);
    const failed = settled.filter((s) => s.status === "rejected").map((s) => (s as PromiseRejectedResult).reason);
    expect(ok).toHaveLength(3);
    for (const v of ok) expect(v.paymentIntent).toStartWith("pi_");
    expect(failed).toHaveLength(2);
    for (const f of failed) expect(f).toMatchObject({ type: act.CAP_HIT, nonRetryable: true });

    // A Temporal retry of a charge that went through: same idempotency key, replayed.
    const retried = await inActivity(act.chargeCustomer, ok[0].customerId, 2900, vaultKey);
    expect(retried.paymentIntent).toBe(ok[0].paymentIntent);

    expect(await inActivity(act.revokeVaultKey, workflowId)).toBe(1);
    await expectCappedRun(label, { charged: 3, capHits: 2, replayed: 1, idempotencyPrefix: `${workflowId}-cus_` });
    await expectRunRevoked(label, vaultKey);
  }, 30_000);
});

// ---------------------------------------------------------------------------
// Kestra: the flow's HTTP requests and Python script, as its YAML writes them
// ---------------------------------------------------------------------------

describe("Kestra (examples/kestra/billing-workflow.yml)", () => {
  test("setup request, KV Store, EachParallel scripts, finally: 3 charged, 2 cap hits exit 0, revoked", async () => {
    const flow = Bun.YAML.parse(readFileSync(join(EXAMPLES, "kestra/billing-workflow.yml"), "utf8")) as any;
    const task = (id: string) => [...flow.tasks, ...flow.finally].find((t: any) => t.id === id);
    const executionId = "4sMYmTqgTEGeDsFXo1Yy3Z";
    const label = `kestra/${executionId}`;
    const kv = new Map<string, string>();
    const outputs: Record<string, { body: string }> = {};
    const ctx: PebbleContext = {
      vars: {},
      inputs: { customer_ids: CUSTOMERS, budget_usd: 100.0 },
      execution: { id: executionId },
      secrets: { KEYBRAKE_API_KEY: TOKENS.kestra!, KEYBRAKE_URL: stack.kb.url }, // the two secrets a user creates
      outputs,
      kv,
    };
    // No default URL anywhere: without the KEYBRAKE_URL secret the first task cannot render.
    expect(readFileSync(join(EXAMPLES, "kestra/billing-workflow.yml"), "utf8")).not.toMatch(/https?:\/\/(?!keybrake:)/);
    expect(() => pebble(task("setup-vault-key").uri, { ...ctx, secrets: { KEYBRAKE_API_KEY: ADMIN_TOKEN } })).toThrow("no secret KEYBRAKE_URL");

    const send = async (t: any, c: PebbleContext) => {
      expect(t.type).toBe("io.kestra.plugin.core.http.Request");
      const headers: Record<string, string> = { "content-type": t.contentType };
      for (const [k, v] of Object.entries(t.headers)) headers[k] = pebble(String(v), c);
      const res = await fetch(pebble(t.uri, c), { method: t.method, headers, body: pebble(t.body, c) });
      const body = await res.text();
      expect(res.status).toBeLessThan(300); // Request fails the task on a non-2xx
      return body;
    };

    // setup-vault-key: the body in the YAML is what the API accepts.
    const setup = task("setup-vault-key");
    const issued = JSON.parse(pebble(setup.body, ctx));
    expect(Object.keys(issued).sort()).toEqual(["agent_run_label", "allowed_endpoints", "daily_usd_cap", "expires_in", "total_usd_cap", "vendor"]);
    expect(issued).toMatchObject({ vendor: "stripe", daily_usd_cap: 100, total_usd_cap: 100, agent_run_label: label });
    outputs["setup-vault-key"] = { body: await send(setup, ctx) };

    // store-vault-key: KV entry that lives exactly as long as the vault key.
    const store = task("store-vault-key");
    expect(store.type).toBe("io.kestra.plugin.core.kv.Set");
    expect(isoDurationSeconds(store.ttl)).toBe(durationSeconds(issued.expires_in));
    kv.set(pebble(store.key, ctx), pebble(store.value, ctx));
    const vaultKey = kv.get(`vault-key-${executionId}`)!;
    expect(vaultKey).toBe(JSON.parse(outputs["setup-vault-key"].body).vault_key);

    // charge-customers: one container per customer, all at once.
    const each = task("charge-customers");
    expect(each.type).toBe("io.kestra.plugin.core.flow.EachParallel");
    const script = each.tasks[0];
    expect(script.retry.maxAttempts).toBeGreaterThan(1); // retries exist, and a cap hit must not trigger them
    const runs = await Promise.all(
      (JSON.parse(pebble(each.value, ctx)) as string[]).map((customer) => {
        const c = { ...ctx, taskrun: { value: customer } };
        const env = Object.fromEntries(Object.entries(script.env).map(([k, v]) => [k, pebble(String(v), c)]));
        return python(script.script, { env });
      }),
    );
    expect(runs.map((r) => r.code)).toEqual([0, 0, 0, 0, 0]); // cap hits exit 0: nothing for Kestra to retry
    expect(runs.filter((r) => r.stdout.startsWith("charged "))).toHaveLength(3);
    expect(runs.filter((r) => r.stdout.startsWith("KEYBRAKE CAP HIT"))).toHaveLength(2);

    // finally: revoke the execution's keys, forget the KV entry.
    expect(JSON.parse(await send(task("revoke-vault-key"), ctx)).revoked).toBe(1);
    const forget = task("forget-vault-key");
    expect(forget.type).toBe("io.kestra.plugin.core.kv.Delete");
    kv.delete(pebble(forget.key, ctx));
    expect(kv.size).toBe(0);

    await expectCappedRun(label, { charged: 3, capHits: 2, idempotencyPrefix: `${executionId}-cus_` });
    await expectRunRevoked(label, vaultKey);
  }, 30_000);
});

interface PebbleContext {
  vars: Record<string, unknown>;
  inputs: Record<string, unknown>;
  execution: { id: string };
  secrets: Record<string, string>;
  outputs: Record<string, { body: string }>;
  kv: Map<string, string>;
  taskrun?: { value: string };
}

/**
 * Just the Pebble the flow uses: dotted paths, secret('X'), kv('a' ~ b), and
 * outputs['task'].body | jq('.field') | first. Anything else fails the test, so an edit
 * to the flow that this test cannot follow is noticed rather than silently skipped.
 */
function pebble(template: string, ctx: PebbleContext): string {
  const value = (expr: string): unknown => {
    expr = expr.trim();
    let m: RegExpMatchArray | null;
    if ((m = expr.match(/^secret\('(\w+)'\)$/))) return ctx.secrets[m[1]!] ?? fail(`no secret ${m[1]}`);
    if ((m = expr.match(/^kv\((.+)\)$/))) return ctx.kv.get(String(value(m[1]!))) ?? fail(`no KV entry for ${m[1]}`);
    if ((m = expr.match(/^outputs\['([\w-]+)'\]\.body \| jq\('\.(\w+)'\) \| first$/))) return JSON.parse(ctx.outputs[m[1]!]!.body)[m[2]!];
    if (expr.includes("~")) return expr.split("~").map((part) => String(value(part))).join("");
    if ((m = expr.match(/^'([^']*)'$/))) return m[1];
    if (/^[a-z_]+(\.[a-z_]+)+$/.test(expr)) {
      const found = expr.split(".").reduce<any>((o, k) => o?.[k], ctx);
      return found ?? fail(`${expr} is undefined`);
    }
    return fail(`Pebble expression this test does not know: ${expr}`);
  };
  return template.replace(/\{\{(.+?)\}\}/g, (_, expr: string) => {
    const v = value(expr);
    return typeof v === "string" ? v : JSON.stringify(v);
  });
}

// ---------------------------------------------------------------------------
// Argo Workflows: the manifest's scripts and containers, templated as Argo would
// ---------------------------------------------------------------------------

describe("Argo Workflows (examples/argo-workflows/billing-workflow.yaml)", () => {
  test("curl + jq setup step, withItems pods, exit handler: 3 charged, cap-hit pods exit 3 unretried, revoked", async () => {
    const wf = Bun.YAML.parse(readFileSync(join(EXAMPLES, "argo-workflows/billing-workflow.yaml"), "utf8")) as any;
    const template = (name: string) => wf.spec.templates.find((t: any) => t.name === name);
    const workflowName = "billing-agent-x7k2p";
    const label = `argo/${workflowName}`;
    const params = Object.fromEntries(wf.spec.arguments.parameters.map((p: any) => [p.name, p.value]));
    // Required at submit: no default host the management token could be sent to.
    expect(Object.keys(params)).toContain("keybrake_url");
    expect(params.keybrake_url).toBeUndefined();
    // argo submit billing-workflow.yaml -p budget_usd=100 -p keybrake_url=…
    const vars: Record<string, string> = {
      "workflow.name": workflowName,
      "workflow.parameters.budget_usd": "100",
      "workflow.parameters.keybrake_url": stack.kb.url,
    };
    const secrets: Record<string, string> = { "keybrake-credentials/api_key": TOKENS.argo! };
    const containerEnv = (t: any, v: Record<string, string>) =>
      Object.fromEntries(
        t.container.env.map((e: any) => [e.name, e.valueFrom ? secrets[`${e.valueFrom.secretKeyRef.name}/${e.valueFrom.secretKeyRef.key}`]! : argo(e.value, v)]),
      );
    const dir = mkdtempSync(join(tmpdir(), "argo-outputs-"));
    try {
      // issue-vault-key: the manifest's own sh script (curl + jq), its output to the declared parameter file.
      const dag = template(wf.spec.entrypoint).dag.tasks;
      const issueTask = dag.find((t: any) => t.name === "issue-vault-key");
      const issue = template(issueTask.template);
      expect(issue.outputs.parameters[0]).toMatchObject({ name: "vault_key", valueFrom: { path: "/tmp/vault_key" } });
      const issueVars = {
        ...vars,
        "inputs.parameters.budget_usd": argo(issueTask.arguments.parameters[0].value, vars),
        "outputs.parameters.vault_key.path": join(dir, "vault_key"),
      };
      const setup = await run([...issue.container.command, argo(issue.container.args[0], issueVars)], { env: containerEnv(issue, issueVars) });
      expect(setup.code).toBe(0);
      const vaultKey = readFileSync(join(dir, "vault_key"), "utf8");
      expect(vaultKey).toMatch(/^\S+$/);

      // charge-customers: one pod per withItems entry, all at once, each with the vault key.
      const chargeTask = dag.find((t: any) => t.name === "charge-customers");
      expect(chargeTask.depends).toBe("issue-vault-key");
      const charge = template(chargeTask.template);
      expect(charge.retryStrategy.retryPolicy).toBe("OnError");
      const pods = await Promise.all(
        chargeTask.withItems.map((item: string) => {
          const args = Object.fromEntries(chargeTask.arguments.parameters.map((p: any) => [p.name, p.value]));
          const podVars = {
            ...vars,
            "inputs.parameters.customer_ids": argo(args.customer_ids, { ...vars, item }),
            "inputs.parameters.vault_key": argo(args.vault_key, { ...vars, "tasks.issue-vault-key.outputs.parameters.vault_key": vaultKey }),
          };
          const [interpreter, ...rest] = charge.container.command.map((c: string) => argo(c, podVars));
          expect(interpreter).toBe("python");
          return run([PYTHON, ...rest], { env: containerEnv(charge, podVars), cwd: join(EXAMPLES, "argo-workflows") });
        }),
      );
      const customers = chargeTask.withItems.flatMap((i: string) => i.split(","));
      const capHits = pods.flatMap((p) => p.stderr.split("\n").filter((line: string) => line.startsWith("KEYBRAKE CAP HIT")));
      expect(customers).toHaveLength(6);
      expect(capHits).toHaveLength(3);
      // A pod with a cap hit exits 3 (OnError does not retry it); a pod without one exits 0.
      for (const p of pods) expect(p.code).toBe(p.stderr.includes("KEYBRAKE CAP HIT") ? 3 : 0);

      // onExit: the revoke step, after the run failed on the cap hits.
      const exit = template(wf.spec.onExit);
      const exitVars = { ...vars, "workflow.status": "Failed" };
      const revoke = await run([...exit.container.command, argo(exit.container.args[0], exitVars)], { env: containerEnv(exit, exitVars) });
      expect(revoke.code).toBe(0);
      expect(revoke.stdout).toStartWith(`workflow ${workflowName} is Failed`);
      expect(JSON.parse(revoke.stdout.trim().split("\n").at(-1)!).revoked).toBe(1);

      await expectCappedRun(label, { charged: 3, capHits: 3, idempotencyPrefix: `${workflowName}-cus_` });
      await expectRunRevoked(label, vaultKey);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 30_000);
});

/** Argo's {{…}} substitution; an unknown variable fails the test. */
function argo(text: string, vars: Record<string, string>): string {
  return text.replace(/\{\{([^{}]+)\}\}/g, (_, name: string) => vars[name.trim()] ?? fail(`Argo variable this test does not know: ${name}`));
}

// ---------------------------------------------------------------------------
// Windmill: the flow's scripts, called as the flow wires them
// ---------------------------------------------------------------------------

describe("Windmill (examples/windmill/billing__flow)", () => {
  const dir = join(EXAMPLES, "windmill/billing__flow");

  test("flow.yaml inlines the three scripts and binds exactly their parameters", () => {
    const flow = Bun.YAML.parse(readFileSync(join(dir, "flow.yaml"), "utf8")) as any;
    const steps = [...flow.value.modules, ...flow.value.modules[1].value.modules, flow.value.failure_module];
    const scripted = steps.filter((m: any) => m.value.type === "rawscript");
    expect(scripted.map((m: any) => m.id)).toEqual(["issue_vault_key", "revoke_vault_key", "charge_customer", "failure"]);
    for (const m of scripted) {
      const file = m.value.content.replace("!inline ", "");
      const params = mainParameters(readFileSync(join(dir, file), "utf8"));
      expect(Object.keys(m.value.input_transforms).every((name) => params.includes(name))).toBe(true);
      expect(params.length).toBeGreaterThan(0);
    }
    expect(flow.value.modules[1].value).toMatchObject({ type: "forloopflow", parallel: true });
  });

  test("issue, parallel for-each, revoke: 3 charged, 2 cap_hit results (not errors), revoked", async () => {
    const flowJobId = "0193f1d2-7a6b-7c8d-9e0f-112233445566";
    const label = `windmill/${flowJobId}`;
    process.env.WM_ROOT_FLOW_JOB_ID = flowJobId;
    try {
      const issue = await import("../examples/windmill/billing__flow/issue_vault_key.ts");
      const charge = await import("../examples/windmill/billing__flow/charge_customer.ts");
      const revoke = await import("../examples/windmill/billing__flow/revoke_vault_key.ts");

      const step1 = await issue.main(TOKENS.windmill!, 100);
      expect(step1.agent_run_label).toBe(label);
      const log = spyOn(console, "log").mockImplementation(() => {}); // the step's job log
      const results = await Promise.all(CUSTOMERS.map((c) => charge.main(c, step1.vault_key, step1.agent_run_label, 2900)));
      const logged = log.mock.calls.map((c) => c[0]);
      log.mockRestore();
      expect(results.filter((r) => r.status === "charged")).toHaveLength(3);
      const capped = results.filter((r) => r.status === "cap_hit");
      expect(capped).toHaveLength(2);
      expect(logged.sort()).toEqual(capped.map((r) => `Keybrake spend cap reached; ${r.customer_id} not charged`));

      // A Windmill retry of a charge that went through is replayed, not charged again.
      const done = results.find((r) => r.status === "charged")!;
      const retried = await charge.main(done.customer_id, step1.vault_key, step1.agent_run_label, 2900);
      expect(retried).toEqual(done);

      const summary = await revoke.main(TOKENS.windmill!, results);
      expect(summary).toMatchObject({ agent_run_label: label, revoked: 1 });
      expect(summary.charged).toHaveLength(3);
      expect(summary.cap_hit).toHaveLength(2);

      await expectCappedRun(label, { charged: 3, capHits: 2, replayed: 1, idempotencyPrefix: `${label}-cus_` });
      await expectRunRevoked(label, step1.vault_key);
    } finally {
      delete process.env.WM_ROOT_FLOW_JOB_ID;
    }
  }, 30_000);
});

/** Parameter names of `export async function main(...)`, for checking the flow's bindings. */
function mainParameters(source: string): string[] {
  const m = source.match(/export async function main\(([\s\S]*?)\)\s*\{/) ?? fail("no main()");
  return m[1]!
    .replace(/\/\/.*$/gm, "")
    .split(",")
    .map((p) => p.trim().match(/^(\w+)/)?.[1])
    .filter((p): p is string => !!p);
}

// ---------------------------------------------------------------------------
// No public fallback: a recipe without KEYBRAKE_URL fails before sending anything
// ---------------------------------------------------------------------------

describe("without KEYBRAKE_URL every recipe stops with a clear message and sends nothing", () => {
  const MESSAGE = "KEYBRAKE_URL is not set";
  const pythonRecipes: [name: string, dir: string, call: string][] = [
    ["Airflow", "airflow", `import billing_dag as m; m.issue_vault_key(run_id="r", params={"budget_usd": 1.0})`],
    ["Temporal, Python", "temporal/python", `import asyncio, activities as m; asyncio.run(m.issue_vault_key("wf", 1.0))`],
  ];
  for (const [name, dir, call] of pythonRecipes) {
    test(name, async () => {
      const r = await run([PYTHON, "-c", call], { cwd: join(EXAMPLES, dir), env: { PYTHONPATH: join(EXAMPLES, dir), KEYBRAKE_API_KEY: ADMIN_TOKEN } });
      expect(r.code).not.toBe(0);
      expect(r.stderr).toContain(MESSAGE);
    });
  }

  test("Temporal, TypeScript and Windmill", async () => {
    const saved = process.env.KEYBRAKE_URL;
    delete process.env.KEYBRAKE_URL;
    const sent = spyOn(globalThis, "fetch");
    try {
      const temporal = await import("../examples/temporal/typescript/activities.ts");
      const windmill = await import("../examples/windmill/billing__flow/issue_vault_key.ts");
      const revoke = await import("../examples/windmill/billing__flow/revoke_vault_key.ts");
      await expect(temporal.issueVaultKey("wf", 1)).rejects.toThrow(MESSAGE);
      await expect(windmill.main(ADMIN_TOKEN, 1)).rejects.toThrow(MESSAGE);
      await expect(revoke.main(ADMIN_TOKEN, [])).rejects.toThrow(MESSAGE);
      await Bun.sleep(0);
      expect(sent).not.toHaveBeenCalled();
    } finally {
      sent.mockRestore();
      process.env.KEYBRAKE_URL = saved;
    }
  });
});

// ---------------------------------------------------------------------------
// Static checks for the parts no test above executes
// ---------------------------------------------------------------------------

describe("static checks", () => {
  test("the TypeScript recipes and client type-check against the real SDK types (workflows.ts included; worker.ts needs @temporalio/worker, not installed)", async () => {
    const r = await run([join(ROOT, "node_modules/.bin/tsc"), "--noEmit", "-p", join(EXAMPLES, "tsconfig.json")], { cwd: ROOT });
    expect(r.stdout + r.stderr).toBe("");
    expect(r.code).toBe(0);
  }, 60_000);

  test("every Python file compiles, worker.py included (temporalio is not installed here)", async () => {
    const files = [...new Bun.Glob("**/*.py").scanSync(EXAMPLES)].map((f) => join(EXAMPLES, f));
    files.push(join(ROOT, "clients/keybrake.py"));
    expect(files.length).toBeGreaterThanOrEqual(6);
    const r = await run([PYTHON, "-c", "import ast, sys\nfor f in sys.argv[1:]: ast.parse(open(f).read(), f)", ...files]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
  });
});

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/** Runs a command without blocking: the Keybrake under test lives in this very process. */
async function run(cmd: string[], opts: { env?: Record<string, string>; cwd?: string } = {}) {
  const proc = Bun.spawn(cmd, {
    cwd: opts.cwd,
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", PYTHONDONTWRITEBYTECODE: "1", ...opts.env },
    stdout: "pipe",
    stderr: "pipe",
  });
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  return { code, stdout, stderr };
}

/** A Python snippet with the recipe's directory importable and Keybrake's URL in the env (each test passes its token). */
async function python(script: string, opts: { cwd?: string; args?: string[]; env?: Record<string, string> } = {}) {
  const r = await run([PYTHON, "-c", script, ...(opts.args ?? [])], {
    cwd: opts.cwd,
    env: { KEYBRAKE_URL: stack.kb.url, ...(opts.cwd ? { PYTHONPATH: opts.cwd } : {}), ...opts.env },
  });
  if (r.code !== 0 && r.stderr) console.error(r.stderr);
  return r;
}

function isoDurationSeconds(iso: string): number {
  const m = iso.match(/^PT(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?$/);
  if (!m) return fail(`not a PT… duration: ${iso}`);
  return Number(m[1] ?? 0) * 3600 + Number(m[2] ?? 0) * 60 + Number(m[3] ?? 0);
}

function durationSeconds(text: string): number {
  const m = text.match(/^(\d+)([smhd])$/);
  if (!m) return fail(`not a duration: ${text}`);
  return Number(m[1]) * { s: 1, m: 60, h: 3600, d: 86400 }[m[2] as "s" | "m" | "h" | "d"];
}

function fail(message: string): never {
  throw new Error(message);
}

/** These tests run the Python and shell code for real: say what to install when it is missing. */
async function requireDebianTools() {
  const check = Bun.spawn([PYTHON, "-c", "import stripe, httpx"], { stdout: "ignore", stderr: "ignore" });
  const missing = [(await check.exited) === 0 ? null : `${PYTHON} with stripe and httpx`, Bun.which("jq") ? null : "jq", Bun.which("curl") ? null : "curl"];
  if (missing.some(Boolean)) {
    throw new Error(`missing ${missing.filter(Boolean).join(", ")}: apt-get install -y python3-stripe python3-httpx jq curl`);
  }
}
