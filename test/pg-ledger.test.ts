/**
 * The PostgreSQL ledger across replicas (SPEC §8): real PostgreSQL, real processes, each with its
 * own connection pool, as separate Keybrake replicas would be. Proves zero overshoot for keys and
 * budgets under concurrency across processes, revocation and idempotent replays seen across
 * replicas, reservations that survive a SIGKILLed replica, and 503 (never forwarding) while the
 * database is down, with recovery after.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawn } from "bun";
import { join } from "node:path";
import { PG_MIGRATIONS } from "../src/db/migrations.ts";
import { migratePostgres, openPostgres, type Pg } from "../src/db/pg.ts";
import type { CallFacts, LiveKey, RepeatGuard, Reservation } from "../src/domain/ledger.ts";
import { PgLedger } from "../src/ledger/pg.ts";
import { PgCapAlerts } from "../src/ledger/pg-alerts.ts";
import { LedgerUnavailable } from "../src/ledger/types.ts";
import { createLogger } from "../src/log.ts";
import { Forwarder } from "../src/proxy/forward.ts";
import { freshDatabase, postgresAvailable, serially, startCluster } from "./pg.ts";

const USD = 1_000_000;
const WORKER = join(import.meta.dir, "pg-replica-worker.ts");
const call: CallFacts = { vendor: "stripe", method: "POST", path: "/v1/charges", idempotencyKey: null };
const settlement = (micros: number) => ({ vendorStatus: 200, actualMicros: micros, vendorRequestId: "req_1", vendorObjectId: "ch_1", latencyMs: 1 });

let seq = 0;
/** A vault key row as KeyService writes it; the vault key itself is "vk_<id>" and only its hash is stored. */
async function insertKey(sql: Pg, opts: { dailyUsd: number; totalUsd?: number; label?: string }): Promise<{ id: string; hash: string }> {
  const id = `key_t${process.pid}_${++seq}`;
  const hash = new Bun.CryptoHasher("sha256").update(`vk_${id}`).digest("hex");
  await sql`INSERT INTO vault_keys (id, key_hash, key_hint, vendor, daily_cap_micros, total_cap_micros, allowed_endpoints, agent_run_label, expires_at, created_at)
            VALUES (${id}, ${hash}, 'vk_', 'stripe', ${opts.dailyUsd * USD}, ${opts.totalUsd === undefined ? null : opts.totalUsd * USD}, '["POST /v1/charges"]',
                    ${opts.label ?? "run/" + id}, ${Date.now() + 3600_000}, ${Date.now()})`;
  return { id, hash };
}

async function replica(url: string, keyId: string, count: number, micros: number, mode: "settle" | "hold") {
  const proc = spawn([process.execPath, WORKER, url, keyId, String(count), String(micros), mode], { stdout: "pipe", stderr: "inherit" });
  return proc;
}

async function runReplicas(url: string, jobs: { keyId: string; count: number; micros: number }[]): Promise<Record<string, number>> {
  const procs = await Promise.all(jobs.map((j) => replica(url, j.keyId, j.count, j.micros, "settle")));
  const outs = await Promise.all(procs.map(async (p) => ((await p.exited) === 0 ? JSON.parse(await new Response(p.stdout).text()) : { failed: 1 })));
  const total: Record<string, number> = {};
  for (const o of outs) for (const [k, v] of Object.entries(o as Record<string, number>)) total[k] = (total[k] ?? 0) + v;
  return total;
}

async function day(sql: Pg, keyId: string) {
  const [r] = await sql`SELECT spent_micros::float8 AS spent, reserved_micros::float8 AS reserved FROM key_spend_days WHERE key_id = ${keyId}`;
  return { spent: r?.spent ?? 0, reserved: r?.reserved ?? 0 };
}

describe.skipIf(!postgresAvailable())("PostgreSQL ledger across replicas", () => {
  let url: string;
  let sql: Pg;
  let a: PgLedger;
  let b: PgLedger;
  let sqlB: Pg;

  beforeAll(async () => {
    url = await freshDatabase("ledger");
    sql = openPostgres(url);
    expect(await migratePostgres(sql)).toEqual(PG_MIGRATIONS.map((m) => m.name));
    sqlB = openPostgres(url);
    a = new PgLedger(sql);
    b = new PgLedger(sqlB); // a second replica: its own pool, nothing shared in memory
  });
  afterAll(async () => {
    await sql?.close();
    await sqlB?.close();
  });

  test("migrations are applied once: a second replica starting applies nothing", async () => {
    expect(await migratePostgres(sqlB)).toEqual([]);
  });

  test("300 concurrent charges over 3 replica processes spend exactly the cap, and never more", async () => {
    const key = await insertKey(sql, { dailyUsd: 123 });
    const tally = await runReplicas(url, [0, 1, 2].map(() => ({ keyId: key.id, count: 100, micros: USD })));
    expect(tally).toEqual({ reserved: 123, cap_hit: 177 });
    expect(await day(sql, key.id)).toEqual({ spent: 123 * USD, reserved: 0 });
    const [audit] = await sql`SELECT count(*)::int AS n, count(*) FILTER (WHERE ledger_state = 'settled')::int AS settled,
                                     coalesce(sum(settled_micros), 0)::float8 AS money FROM audit_log WHERE key_id = ${key.id}`;
    expect(audit).toEqual({ n: 300, settled: 123, money: 123 * USD });
  }, 60_000);

  test("a pooled budget over three keys on three replicas holds exactly its cap", async () => {
    const common = `pool-${process.pid}/`;
    const keys = await Promise.all([1, 2, 3].map((i) => insertKey(sql, { dailyUsd: 100, label: `${common}run-${i}` })));
    await insertKey(sql, { dailyUsd: 100, label: `pool-${process.pid}-other/run` }); // not under the prefix: never counted
    await sql`INSERT INTO budgets (id, name, label_prefix, daily_cap_micros, created_at, updated_at) VALUES (${"bud_" + seq}, 'pool', ${common}, ${50 * USD}, 0, 0)`;
    const tally = await runReplicas(url, keys.map((k) => ({ keyId: k.id, count: 60, micros: USD })));
    expect(tally).toEqual({ reserved: 50, cap_hit: 130 });
    const [bud] = await sql`SELECT spent_micros::float8 AS spent, reserved_micros::float8 AS reserved FROM budget_spend_days WHERE budget_id = ${"bud_" + seq}`;
    expect(bud).toEqual({ spent: 50 * USD, reserved: 0 });
    const [refused] = await sql`SELECT count(*)::int AS n FROM audit_log WHERE error_code = 'budget_cap_exceeded' AND key_id = ANY(${keys.map((k) => k.id)}::text[])`;
    expect(refused.n).toBe(130);
  }, 60_000);

  test("a revocation on one replica refuses the very next call on another, even one holding the key in memory", async () => {
    const k = await insertKey(sql, { dailyUsd: 10 });
    const live = (await b.findKeyByHash(k.hash))!;
    expect((await b.admit(live, call, USD, Date.now(), null)).kind).toBe("reserved");
    await sql`UPDATE vault_keys SET revoked_at = ${Date.now()} WHERE id = ${k.id}`; // as DELETE /vault/keys/{id} on replica A
    const next = await b.admit(live, call, USD, Date.now(), null);
    expect(next).toMatchObject({ kind: "refused", outcome: "revoked" });
  });

  test("an Idempotency-Key is in flight, replayed and mismatched across replicas", async () => {
    const k = await insertKey(sql, { dailyUsd: 10 });
    const key = (await a.findKeyByHash(k.hash))!;
    const guard = (hash: string): RepeatGuard => ({ idemKey: "idem-1", requestHash: hash, ttlMs: 86_400_000, vendorDedupes: true, staleAfterMs: 60_000 });
    const first = await a.admit(key, { ...call, idempotencyKey: "idem-1" }, 2 * USD, Date.now(), guard("h1"));
    expect(first.kind).toBe("reserved");
    expect((await b.admit(key, call, 2 * USD, Date.now(), guard("h1"))).kind).toBe("in_flight");
    if (first.kind !== "reserved") throw new Error("unreachable");
    const answer = { status: 200, headers: [["content-type", "application/json"]] as [string, string][], body: new TextEncoder().encode('{"id":"ch_1"}') };
    await a.settle(first.reservation, settlement(2 * USD), answer);
    const replay = await b.admit(key, call, 2 * USD, Date.now(), guard("h1"));
    expect(replay.kind).toBe("replay");
    if (replay.kind !== "replay") throw new Error("unreachable");
    expect({ status: replay.answer.status, headers: replay.answer.headers, body: new TextDecoder().decode(replay.answer.body) }).toEqual({ ...answer, body: '{"id":"ch_1"}' });
    expect((await b.admit(key, call, 2 * USD, Date.now(), guard("other-body"))).kind).toBe("mismatch");
    expect(await day(sql, k.id)).toEqual({ spent: 2 * USD, reserved: 0 }); // charged once
  });

  test("priced objects and release: what a settle recorded is read by another replica; a 4xx releases", async () => {
    const k = await insertKey(sql, { dailyUsd: 10 });
    const key = (await a.findKeyByHash(k.hash))!;
    const r1 = await a.admit(key, call, 3 * USD, Date.now(), null);
    if (r1.kind !== "reserved") throw new Error(`expected reserved, got ${r1.kind}`);
    await a.settle(r1.reservation, settlement(3 * USD), null, { objectId: "pi_9", kind: "payment_intent", amount: 300, currency: "usd", countedMicros: 3 * USD });
    expect(await b.pricedObject(k.id, "pi_9")).toEqual({ objectId: "pi_9", kind: "payment_intent", amount: 300, currency: "usd", countedMicros: 3 * USD });
    expect(await b.pricedObject("key_other", "pi_9")).toBeNull();
    const r2 = await b.admit(key, call, 4 * USD, Date.now(), null);
    if (r2.kind !== "reserved") throw new Error(`expected reserved, got ${r2.kind}`);
    expect(r2.reservation.remainingMicros).toBe(3 * USD);
    await b.release(r2.reservation, { ...settlement(0), vendorStatus: 402 }, null);
    expect(await day(sql, k.id)).toEqual({ spent: 3 * USD, reserved: 0 });
  });

  test("cap alerts and their webhook outbox rows are raised once across replicas, in the transaction that moved the money", async () => {
    await sql`INSERT INTO webhooks (id, url, events, thresholds, format, secret_sealed, secret_hint, created_at)
              VALUES ('whk_pg', 'http://127.0.0.1:9/hook', '["cap.threshold","cap.hit"]', '[0.5,1]', 'json', 'sealed', 'whsec_…', 0)`;
    const k = await insertKey(sql, { dailyUsd: 10 });
    let kicks = 0;
    const replicas = [new PgLedger(sql, new PgCapAlerts(() => kicks++)), new PgLedger(sqlB, new PgCapAlerts(() => kicks++))];
    const key = (await replicas[0]!.findKeyByHash(k.hash))!;
    const kinds = await Promise.all(
      Array.from({ length: 24 }, async (_, i) => {
        const ledger = replicas[i % 2]!;
        const r = await ledger.admit(key, call, USD, Date.now(), null);
        if (r.kind === "reserved") await ledger.settle(r.reservation, settlement(USD), null);
        return r.kind;
      }),
    );
    expect(kinds.filter((x) => x === "reserved").length).toBe(10);
    const events = await sql`SELECT type, data FROM events WHERE target = ${k.id} ORDER BY type, id`;
    expect(events.map((e: any) => [e.type, JSON.parse(e.data).threshold ?? null, JSON.parse(e.data).spent_usd])).toEqual([
      ["cap.hit", null, 10],
      ["cap.threshold", 0.5, 5],
      ["cap.threshold", 1, 10],
    ]);
    const [outbox] = await sql`SELECT count(*)::int AS n FROM webhook_deliveries d JOIN events e ON e.id = d.event_id WHERE e.target = ${k.id} AND d.state = 'pending'`;
    expect(outbox.n).toBe(3);
    expect(kicks).toBeGreaterThan(0); // the sender is told after each commit that queued a delivery (a batch may queue several)
    await sql`UPDATE webhooks SET deleted_at = 1 WHERE id = 'whk_pg'`;
  });

  test("group commit: a write that fails in a batch fails alone, and the others are applied exactly once", async () => {
    const k = await insertKey(sql, { dailyUsd: 10 });
    const key = (await a.findKeyByHash(k.hash))!;
    // Same key, same event-loop turn: one transaction; the bad audit row (vendor NOT NULL) aborts it.
    const [first, bad, second] = await Promise.allSettled([
      a.admit(key, call, USD, Date.now(), null),
      a.recordRefusal(key, { ...call, vendor: null as unknown as string }, "invalid_request", "x", Date.now()),
      a.admit(key, call, 2 * USD, Date.now(), null),
    ]);
    expect([first.status, bad.status, second.status]).toEqual(["fulfilled", "rejected", "fulfilled"]);
    expect(await day(sql, k.id)).toEqual({ spent: 0, reserved: 3 * USD });
    const [rows] = await sql`SELECT count(*)::int AS n FROM audit_log WHERE key_id = ${k.id}`;
    expect(rows.n).toBe(2);
  });

  // The batched path (src/ledger/pg-batch.ts) against the one-at-a-time path: the same calls, the same rows.
  /** A key's audit rows in decision order (ids are taken under the key's lock), without what differs between two keys. */
  async function auditRows(keyId: string): Promise<Record<string, unknown>[]> {
    const rows = await sql`SELECT outcome, error_code, estimated_micros::float8 AS estimated, ledger_state, settled_micros::float8 AS settled, vendor_status,
                                  vendor_request_id, vendor_object_id, latency_ms, (spend_day IS NOT NULL) AS has_day, idempotency_key
                             FROM audit_log WHERE key_id = ${keyId} ORDER BY id`;
    return rows.map((r: any) => ({ ...r }));
  }
  async function totals(keyId: string) {
    const [k] = await sql`SELECT spent_total_micros::float8 AS spent, reserved_total_micros::float8 AS reserved FROM vault_keys WHERE id = ${keyId}`;
    return { ...k };
  }

  const fanOuts = [
    { name: "daily cap, $1 calls", dailyUsd: 50, totalUsd: undefined, price: USD, calls: 120 },
    { name: "daily cap, $3 calls", dailyUsd: 60, totalUsd: undefined, price: 3 * USD, calls: 60 },
    { name: "lifetime cap under a large daily cap", dailyUsd: 1000, totalUsd: 40, price: 2 * USD, calls: 50 },
  ];
  for (const f of fanOuts) {
    test(`batched fan-out over 2 replicas (${f.name}): exactly the cap, and the rows the one-at-a-time path writes`, async () => {
      const k = await insertKey(sql, { dailyUsd: f.dailyUsd, totalUsd: f.totalUsd });
      const key = (await a.findKeyByHash(k.hash))!;
      const replicas = [a, b];
      const batchedBefore = a.batchedWrites + b.batchedWrites;
      const kinds = await Promise.all(
        Array.from({ length: f.calls }, async (_, i) => {
          const ledger = replicas[i % 2]!;
          const r = await ledger.admit(key, call, f.price, Date.now(), null);
          if (r.kind === "reserved") await ledger.settle(r.reservation, settlement(f.price), null);
          return r.kind;
        }),
      );
      const cap = Math.min(f.dailyUsd, f.totalUsd ?? Infinity) * USD;
      const admitted = cap / f.price;
      expect(a.batchedWrites + b.batchedWrites - batchedBefore).toBeGreaterThan(f.calls / 2); // most admissions and settlements went through batches
      expect(kinds.filter((x) => x === "reserved").length).toBe(admitted);
      expect(await day(sql, k.id)).toEqual({ spent: cap, reserved: 0 });
      expect(await totals(k.id)).toEqual({ spent: cap, reserved: 0 });
      const rows = await auditRows(k.id);
      expect(rows.length).toBe(f.calls);

      // The same calls, one at a time on a fresh key: every write its own transaction (the per-write path).
      const solo = await insertKey(sql, { dailyUsd: f.dailyUsd, totalUsd: f.totalUsd });
      const soloKey = (await a.findKeyByHash(solo.hash))!;
      const soloBatched = a.batchedWrites;
      for (let i = 0; i < f.calls; i++) {
        const r = await a.admit(soloKey, call, f.price, Date.now(), null);
        if (r.kind === "reserved") await a.settle(r.reservation, settlement(f.price), null);
      }
      expect(a.batchedWrites).toBe(soloBatched);
      expect(rows).toEqual(await auditRows(solo.id));
      expect(rows.filter((r) => r.ledger_state === "settled").length).toBe(admitted);
      expect(rows.filter((r) => r.outcome === "cap_hit").length).toBe(f.calls - admitted);
    }, 60_000);
  }

  /** Writes of one turn (one group, so one batch), each step after the one before has committed. */
  type Step = (ledger: PgLedger, key: LiveKey, held: Reservation[]) => Promise<unknown>[];
  const admitStep = (count: number, micros: number): Step => (ledger, key, held) =>
    Array.from({ length: count }, () => ledger.admit(key, call, micros, Date.now(), null).then((r) => (r.kind === "reserved" && held.push(r.reservation), r)));
  const mixes: { name: string; dailyUsd: number; steps: Step[] }[] = [
    {
      name: "settle, release, keep unsettled and refuse, then admit into what the releases freed",
      dailyUsd: 10,
      steps: [
        admitStep(6, 2 * USD), // 5 reserved, 1 cap_hit
        (ledger, key, held) => [
          ledger.settle(held[0]!, settlement(2 * USD), null, { objectId: "pi_b1", kind: "payment_intent", amount: 200, currency: "usd", countedMicros: 2 * USD }),
          ledger.release(held[1]!, { ...settlement(0), vendorStatus: 402 }, null),
          ledger.keepUnsettled(held[2]!, { ...settlement(0), vendorStatus: null }, "upstream_timeout"),
          ledger.settle(held[3]!, settlement(1 * USD), null), // cheaper than reserved: $1 back
          ledger.recordRefusal(key, call, "endpoint_denied", "endpoint_not_allowed", Date.now()),
          ...admitStep(3, 2 * USD)(ledger, key, held), // $3 free after the release and the cheaper settle: 1 fits, 2 refused
        ],
        (ledger, _key, held) => held.slice(4).map((r) => ledger.settle(r, settlement(r.micros), null)),
      ],
    },
    {
      name: "zero-priced calls, calls past the cap and on an expired key",
      dailyUsd: 1,
      steps: [
        admitStep(4, 0),
        (ledger, key, held) => [
          ...admitStep(2, USD)(ledger, key, held), // 1 fits, 1 cap_hit
          ...admitStep(2, 0)(ledger, key, held),
          ledger.admit(key, call, 0, Date.now() + 7200_000, null), // past expires_at: refused "expired"
        ],
      ],
    },
  ];
  for (const m of mixes) {
    test(`batched group commit (${m.name}): the same results and rows as one transaction per write`, async () => {
      const run = async (oneAtATime: boolean) => {
        const k = await insertKey(sql, { dailyUsd: m.dailyUsd });
        const key = (await a.findKeyByHash(k.hash))!;
        const held: Reservation[] = [];
        const results: unknown[] = [];
        const ledger = oneAtATime ? serially(a) : a;
        for (const step of m.steps) results.push(...(await Promise.all(step(ledger, key, held))));
        return { results: JSON.parse(JSON.stringify(results.map((r) => (typeof r === "number" ? "audit id" : r))).replace(/"auditId":\d+/g, '"auditId":0').replace(/"keyId":"[^"]+"/g, '"keyId":""')), rows: await auditRows(k.id), day: await day(sql, k.id), totals: await totals(k.id) };
      };
      const before = a.batchedWrites;
      const batched = await run(false);
      expect(a.batchedWrites).toBeGreaterThan(before);
      expect(batched).toEqual(await run(true));
    });
  }

  test("a replica SIGKILLed mid-fan-out leaves its reservations held, and the others count them", async () => {
    const k = await insertKey(sql, { dailyUsd: 100 });
    const proc = await replica(url, k.id, 20, USD, "hold");
    const reader = proc.stdout.getReader();
    let seen = "";
    while (!seen.includes("held")) {
      const { value, done } = await reader.read();
      if (done) break;
      seen += new TextDecoder().decode(value);
    }
    expect(JSON.parse(seen.split("\n")[0]!)).toEqual({ reserved: 20 });
    proc.kill("SIGKILL");
    await proc.exited;
    expect(await day(sql, k.id)).toEqual({ spent: 0, reserved: 20 * USD });
    const key = (await b.findKeyByHash(k.hash))!;
    expect((await b.admit(key, call, 81 * USD, Date.now(), null))).toMatchObject({ kind: "refused", outcome: "cap_hit", remainingMicros: 80 * USD });
    expect((await b.admit(key, call, 80 * USD, Date.now(), null)).kind).toBe("reserved");
  }, 30_000);
});

describe.skipIf(!postgresAvailable())("PostgreSQL stopped and restarted during calls", () => {
  test("while down: LedgerUnavailable, and the proxy answers 503 in the vendor's shape without forwarding; after: it recovers by itself", async () => {
    const cluster = await startCluster(); // its own cluster: stopping it must not disturb the other files
    const dbUrl = cluster.createDatabase("flaky");
    const sql = openPostgres(dbUrl);
    await migratePostgres(sql);
    const ledger = new PgLedger(sql);
    const k = await insertKey(sql, { dailyUsd: 10 });
    const key = (await ledger.findKeyByHash(k.hash))!;
    expect((await ledger.admit(key, call, USD, Date.now(), null)).kind).toBe("reserved");

    let forwarded = 0;
    const forwarder = new Forwarder({
      ledger,
      logger: createLogger("silent"),
      fetch: (async () => {
        forwarded++;
        return new Response("{}");
      }) as unknown as typeof fetch,
    } as unknown as ConstructorParameters<typeof Forwarder>[0]);

    cluster.stop();
    expect(ledger.admit(key, call, USD, Date.now(), null)).rejects.toBeInstanceOf(LedgerUnavailable);
    const res = await forwarder.handle(
      new Request("http://kb/v1/charges", { method: "POST", headers: { authorization: `Bearer vk_${k.id}`, "content-type": "application/x-www-form-urlencoded" }, body: "amount=100&currency=usd" }),
      "stripe",
      "/v1/charges",
      "",
    );
    expect({ status: res.status, error: res.headers.get("x-keybrake-error"), type: ((await res.json()) as any).error?.type, forwarded }).toEqual({
      status: 503,
      error: "unavailable",
      type: "api_error",
      forwarded: 0,
    });

    cluster.start();
    // The pool drops its dead connections and opens new ones: a bounded number of attempts, no sleeps.
    let recovered: string | null = null;
    for (let i = 0; i < 5 && !recovered; i++) {
      recovered = await ledger.admit(key, call, USD, Date.now(), null).then((r) => r.kind, () => null);
    }
    expect(recovered).toBe("reserved");
    expect(await day(sql, k.id)).toEqual({ spent: 0, reserved: 2 * USD });
    await sql.close();
    cluster.destroy();
  }, 60_000);
});
