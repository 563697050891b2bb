/**
 * The PostgreSQL ledger's batched path (src/ledger/pg-batch.ts) for calls with a repeat guard
 * (an Idempotency-Key, or a key's dedupe window): each scenario runs once as groups of one turn
 * (batched where it may be) and once one write at a time (the per-write path), and must give the
 * same results, audit rows, money and idempotency records. Each step says whether the batch must
 * take it: fresh guards are batched; a record that exists, or two writes of one guard in a group,
 * send the group to the per-write path.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { migratePostgres, openPostgres, type Pg } from "../src/db/pg.ts";
import type { CallFacts, LiveKey, RepeatGuard, Reservation, StoredAnswer } from "../src/domain/ledger.ts";
import { MAX_BATCH, PgLedger } from "../src/ledger/pg.ts";
import { freshDatabase, postgresAvailable, serially } from "./pg.ts";

const USD = 1_000_000;
const NOW = Date.now(); // every admission's clock, so both runs write the same record times
const call: CallFacts = { vendor: "stripe", method: "POST", path: "/v1/charges", idempotencyKey: null };
const settlement = (micros: number) => ({ vendorStatus: 200, actualMicros: micros, vendorRequestId: "req_1", vendorObjectId: "ch_1", latencyMs: 1 });
const answer = (id: string): StoredAnswer => ({ status: 200, headers: [["content-type", "application/json"], ["request-id", `req_${id}`]], body: new TextEncoder().encode(`{"id":"${id}"}`) });
const guard = (idemKey: string, o: Partial<RepeatGuard> = {}): RepeatGuard => ({ idemKey, requestHash: `h-${idemKey}`, ttlMs: 86_400_000, vendorDedupes: true, staleAfterMs: 60_000, ...o });
/** A key with a dedupe window guards a call without Idempotency-Key by its request hash (Stripe does not dedupe those). */
const dedupe = (hash: string): RepeatGuard => ({ idemKey: `dedupe:${hash}`, requestHash: hash, ttlMs: 30_000, vendorDedupes: false, staleAfterMs: 60_000 });

let seq = 0;
async function insertKey(sql: Pg, dailyUsd: number): Promise<string> {
  const id = `key_g${process.pid}_${++seq}`;
  const hash = new Bun.CryptoHasher("sha256").update(`vk_${id}`).digest("hex");
  await sql`INSERT INTO vault_keys (id, key_hash, key_hint, vendor, daily_cap_micros, total_cap_micros, allowed_endpoints, agent_run_label, expires_at, created_at)
            VALUES (${id}, ${hash}, 'vk_', 'stripe', ${dailyUsd * USD}, NULL, '["POST /v1/charges"]', ${"run/" + id}, ${NOW + 3600_000}, ${NOW})`;
  return hash;
}

/** Held reservations by the guard's idem key (or "plain-<n>"), so a later step finishes the one it means. */
type Held = Map<string, Reservation>;
/** Writes of one turn (one group), each step after the one before has committed; `batched`: the batch must (or must not) take it. */
interface Step {
  batched: boolean;
  writes: (ledger: PgLedger, key: LiveKey, held: Held) => Promise<unknown>[];
}
const admit = (ledger: PgLedger, key: LiveKey, held: Held, g: RepeatGuard | null, micros = USD, now = NOW) =>
  ledger.admit(key, { ...call, idempotencyKey: g?.idemKey.startsWith("dedupe:") ? null : (g?.idemKey ?? null) }, micros, now, g).then((r) => {
    if (r.kind === "reserved") held.set(g?.idemKey ?? `plain-${held.size}`, r.reservation);
    return r;
  });
const fresh = (n: number, prefix: string): Step => ({ batched: true, writes: (l, k, h) => Array.from({ length: n }, (_, i) => admit(l, k, h, guard(`${prefix}${i}`))) });
const alone = (g: RepeatGuard, micros = USD, now = NOW): Step => ({ batched: false, writes: (l, k, h) => [admit(l, k, h, g, micros, now)] });
const settleWith = (idem: string, ans: StoredAnswer | null): Step => ({ batched: false, writes: (l, _k, h) => [l.settle(h.get(idem)!, settlement(USD), ans)] });

const scenarios: { name: string; dailyUsd: number; steps: Step[] }[] = [
  {
    name: "fresh keys, then settled with and without an answer, released and left unsettled in one group",
    dailyUsd: 10,
    steps: [
      { batched: true, writes: (l, k, h) => [...fresh(12, "f").writes(l, k, h), admit(l, k, h, null)] }, // 10 reserved, 3 cap_hit (no record)
      {
        batched: true,
        writes: (l, k, h) => [
          l.settle(h.get("f0")!, settlement(USD), answer("f0")),
          l.settle(h.get("f1")!, settlement(USD / 2), null), // no answer kept: the record goes
          l.release(h.get("f2")!, { ...settlement(0), vendorStatus: 402 }, { ...answer("f2"), status: 402 }),
          l.release(h.get("f3")!, { ...settlement(0), vendorStatus: 402 }, null),
          l.keepUnsettled(h.get("f4")!, { ...settlement(0), vendorStatus: null }, "upstream_timeout"),
          l.settle(h.get("f5")!, settlement(USD), { status: 200, headers: [], body: new Uint8Array() }),
          admit(l, k, h, guard("g-after")), // fits into what f1, f2 and f3 gave back
          admit(l, k, h, guard("g-after2")),
        ],
      },
      { batched: true, writes: (l, k, h) => [...h.entries()].filter(([id]) => /^(f[6-9]|g-after)/.test(id)).map(([, r]) => l.settle(r, settlement(USD), answer("x"))) },
    ],
  },
  {
    name: "a completed record replayed",
    dailyUsd: 10,
    steps: [alone(guard("r")), settleWith("r", answer("r")), { batched: false, writes: (l, k, h) => [admit(l, k, h, guard("r")), admit(l, k, h, guard("r-new"))] }],
  },
  {
    name: "an in-flight record",
    dailyUsd: 10,
    steps: [alone(guard("i")), { batched: false, writes: (l, k, h) => [admit(l, k, h, guard("i-new")), admit(l, k, h, guard("i"))] }],
  },
  {
    name: "a request-hash conflict",
    dailyUsd: 10,
    steps: [alone(guard("c")), { batched: false, writes: (l, k, h) => [admit(l, k, h, guard("c", { requestHash: "other" })), admit(l, k, h, guard("c-new"))] }],
  },
  {
    name: "an expired record",
    dailyUsd: 10,
    steps: [alone(guard("e", { ttlMs: 1000 })), { batched: false, writes: (l, k, h) => [admit(l, k, h, guard("e"), USD, NOW + 5000), admit(l, k, h, guard("e-new"), USD, NOW + 5000)] }],
  },
  {
    name: "a stale in-flight record carried over (vendor dedupes), then its retry settled with fresh calls",
    dailyUsd: 10,
    steps: [
      alone(guard("s")),
      { batched: false, writes: (l, k, h) => [admit(l, k, h, guard("s"), USD, NOW + 120_000), admit(l, k, h, guard("s-new"), USD, NOW + 120_000)] },
      { batched: false, writes: (l, k, h) => [l.settle(h.get("s")!, settlement(USD), answer("s")), admit(l, k, h, guard("s-new2"))] },
    ],
  },
  {
    name: "the same Idempotency-Key twice in one group",
    dailyUsd: 10,
    steps: [{ batched: false, writes: (l, k, h) => [admit(l, k, h, guard("d")), admit(l, k, h, guard("d")), admit(l, k, h, guard("d2"))] }],
  },
  {
    name: "a settlement and a new call of the same key in one group",
    dailyUsd: 10,
    steps: [alone(guard("a")), { batched: false, writes: (l, k, h) => [l.settle(h.get("a")!, settlement(USD), answer("a")), admit(l, k, h, guard("a"))] }],
  },
  {
    name: "a finish whose record was pruned",
    dailyUsd: 10,
    steps: [
      alone(guard("p", { ttlMs: 1000 })),
      { batched: false, writes: (l) => [l.pruneRepeats(NOW + 5000)] },
      { batched: false, writes: (l, k, h) => [l.settle(h.get("p")!, settlement(USD), answer("p")), admit(l, k, h, guard("p-new"))] },
    ],
  },
  {
    name: "dedupe-window keys: fresh hashes batched, a repeated hash in one group not",
    dailyUsd: 10,
    steps: [
      { batched: true, writes: (l, k, h) => ["h1", "h2", "h3"].map((x) => admit(l, k, h, dedupe(x))) },
      { batched: true, writes: (l, k, h) => [l.settle(h.get("dedupe:h1")!, settlement(USD), answer("h1")), l.release(h.get("dedupe:h2")!, { ...settlement(0), vendorStatus: 400 }, null), admit(l, k, h, dedupe("h4"))] },
      { batched: false, writes: (l, k, h) => [admit(l, k, h, dedupe("h5")), admit(l, k, h, dedupe("h5"))] },
      { batched: false, writes: (l, k, h) => [admit(l, k, h, dedupe("h1")), admit(l, k, h, dedupe("h6"))] }, // h1's record: replayed
    ],
  },
];

describe.skipIf(!postgresAvailable())("PostgreSQL ledger: batched writes with repeat guards", () => {
  let sql: Pg;
  let ledger: PgLedger;

  beforeAll(async () => {
    sql = openPostgres(await freshDatabase("guards"));
    await migratePostgres(sql);
    ledger = new PgLedger(sql);
  });
  afterAll(async () => {
    await sql?.close();
  });

  /** A key's audit rows, ledger and idempotency records, without what differs between two keys (ids as positions in the key's audit log). */
  async function state(keyId: string) {
    const audit = await sql`SELECT id, outcome, error_code, estimated_micros::float8 AS estimated, ledger_state, settled_micros::float8 AS settled, vendor_status,
                                   vendor_request_id, vendor_object_id, latency_ms, spend_day, idempotency_key, replay_of
                              FROM audit_log WHERE key_id = ${keyId} ORDER BY id`;
    const position = new Map(audit.map((r: any, i: number) => [String(r.id), i]));
    const at = (id: unknown) => (id === null ? null : (position.get(String(id)) ?? "elsewhere"));
    const records = await sql`SELECT idem_key, request_hash, state, audit_id, reserved_micros::float8 AS reserved, spend_day, status, headers, encode(body, 'hex') AS body,
                                     expires_at::float8 AS expires_at, CASE WHEN state = 'in_flight' THEN updated_at::float8 END AS in_flight_since
                                FROM idempotency_records WHERE key_id = ${keyId} ORDER BY idem_key`;
    const [money] = await sql`SELECT k.spent_total_micros::float8 AS spent, k.reserved_total_micros::float8 AS reserved, d.spent_micros::float8 AS day_spent, d.reserved_micros::float8 AS day_reserved
                                FROM vault_keys k LEFT JOIN key_spend_days d ON d.key_id = k.id WHERE k.id = ${keyId}`;
    return {
      audit: audit.map(({ id, replay_of, ...r }: any) => ({ ...r, replay_of: at(replay_of) })),
      records: records.map(({ audit_id, ...r }: any) => ({ ...r, audit: at(audit_id) })),
      money: { ...money },
    };
  }

  for (const s of scenarios) {
    test(`${s.name}: the same results and rows as one transaction per write`, async () => {
      const run = async (oneAtATime: boolean) => {
        const key = (await ledger.findKeyByHash(await insertKey(sql, s.dailyUsd)))!;
        const held: Held = new Map();
        const results: unknown[] = [];
        const took: boolean[] = [];
        const l = oneAtATime ? serially(ledger) : ledger;
        for (const step of s.steps) {
          const before = ledger.batchedWrites;
          results.push(...(await Promise.all(step.writes(l, key, held))));
          took.push(ledger.batchedWrites > before);
        }
        const normal = JSON.parse(JSON.stringify(results.map((r) => (typeof r === "number" ? "count or id" : r))).replace(/"(auditId|retryAuditId)":\d+/g, '"$1":0').replace(/"keyId":"[^"]+"/g, '"keyId":""'));
        return { took, results: normal, ...(await state(key.id)) };
      };
      const failuresBefore = ledger.batchRollbacks;
      const batched = await run(false);
      const perWrite = await run(true);
      expect(ledger.batchRollbacks).toBe(failuresBefore); // no batch rolled back by its own checks: the guard was decided right the first time
      expect(batched.took).toEqual(s.steps.map((st) => st.batched));
      expect(perWrite.took).toEqual(s.steps.map(() => false));
      expect({ ...batched, took: null }).toEqual({ ...perWrite, took: null });
      expect(batched.money.reserved + batched.money.spent).toBeLessThanOrEqual(s.dailyUsd * USD);
    });
  }

  test(`a flood on one key is split into batches of at most MAX_BATCH (${MAX_BATCH}) writes, each decided exactly`, async () => {
    const flood = new PgLedger(sql);
    const key = (await flood.findKeyByHash(await insertKey(sql, 500)))!;
    const calls = 2 * MAX_BATCH + 88;
    const kinds = await Promise.all(Array.from({ length: calls }, (_, i) => flood.admit(key, call, USD, NOW, i % 2 ? guard(`flood-${i}`) : null).then((r) => r.kind)));
    expect(flood.largestBatch).toBe(MAX_BATCH);
    expect(flood.stats().commits).toBe(3);
    expect(flood.batchedWrites).toBe(calls);
    expect(flood.batchRollbacks).toBe(0);
    expect(kinds.filter((k) => k === "reserved").length).toBe(500);
    const { money, records } = await state(key.id);
    expect(money).toEqual({ spent: 0, reserved: 500 * USD, day_spent: 0, day_reserved: 500 * USD });
    expect(records.length).toBe(kinds.filter((k, i) => k === "reserved" && i % 2).length);
  });
});
