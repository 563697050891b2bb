/**
 * PostgreSQL reads the rows it needs, not the tables, however big they are and whatever the planner's
 * statistics say: the ledger's batches, and the audit log's pages by time.
 *
 * The ledger's batches touch only their own rows. A busy key holds a day of idempotency records and the audit log
 * grows faster than autovacuum samples it; a batch that joined its rows to those tables was planned
 * as a scan of all of them (the key's every record, the whole log), so each batch cost more as they
 * grew. Measured here by what PostgreSQL itself counts — rows read by sequential and index scans of
 * each table — not by time: bounded by the batch's own rows, not by the table's.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { migratePostgres, openPostgres, type Pg } from "../src/db/pg.ts";
import type { CallFacts, RepeatGuard, Reservation } from "../src/domain/ledger.ts";
import { PgLedger } from "../src/ledger/pg.ts";
import { parseAuditQuery } from "../src/domain/audit.ts";
import { pgOrm } from "../src/store/backend.ts";
import { PgAuditStore } from "../src/store/pg/audit.ts";
import { freshDatabase, postgresAvailable } from "./pg.ts";

const USD = 1_000_000;
const NOW = Date.now();
const SEEDED = 20_000; // records of the one key and audit rows already there, never analyzed
const BATCHES = 12; // more than the 5 executions after which PostgreSQL may switch to a cached generic plan
const PER_BATCH = 16;
const call: CallFacts = { vendor: "stripe", method: "POST", path: "/v1/charges", idempotencyKey: null };
const guard = (idemKey: string): RepeatGuard => ({ idemKey, requestHash: `h-${idemKey}`, ttlMs: 86_400_000, vendorDedupes: true, staleAfterMs: 60_000 });

/** Rows read from each table (sequential scans + index scans), as the statistics collector has them. */
async function rowsRead(sql: Pg): Promise<Record<string, number>> {
  await sql`SELECT pg_stat_clear_snapshot()`;
  const rows = await sql`SELECT t.relname, t.seq_tup_read + coalesce(sum(i.idx_tup_read), 0) AS read, t.n_tup_upd AS updated
                           FROM pg_stat_user_tables t LEFT JOIN pg_stat_user_indexes i ON i.relid = t.relid
                          WHERE t.relname IN ('audit_log', 'idempotency_records') GROUP BY t.relname, t.seq_tup_read, t.n_tup_upd`;
  return Object.fromEntries(rows.flatMap((r: any) => [[r.relname, Number(r.read)], [`${r.relname} updated`, Number(r.updated)]]));
}

/**
 * Runs `work` on connections of its own and closes them, so their backends report their statistics as
 * they exit; returns what `work` returned and the rows read and updated meanwhile, once `reported` says
 * the statistics have landed (a moment after the backends exit; bounded).
 */
async function countedReads<T>(sql: Pg, url: string, work: (own: Pg) => Promise<T>, reported: (d: Record<string, number>) => boolean) {
  const before = await rowsRead(sql);
  const own = openPostgres(url, { max: 2 });
  const result = await work(own);
  await own.close();
  const delta = async () => Object.fromEntries(Object.entries(await rowsRead(sql)).map(([k, v]) => [k, v - (before[k] ?? 0)]));
  let d = await delta();
  for (let i = 0; i < 100 && !reported(d); i++) {
    await Bun.sleep(50);
    d = await delta();
  }
  return { result, read: d };
}

describe.skipIf(!postgresAvailable())("PostgreSQL ledger: a batch reads its own rows, not the tables", () => {
  let sql: Pg;
  let url: string;
  let keyId: string;
  let keyHash: string;

  beforeAll(async () => {
    url = await freshDatabase("scale");
    sql = openPostgres(url);
    await migratePostgres(sql);
    keyId = `key_scale_${process.pid}`;
    keyHash = new Bun.CryptoHasher("sha256").update(`vk_${keyId}`).digest("hex");
    await sql`INSERT INTO vault_keys (id, key_hash, key_hint, vendor, daily_cap_micros, total_cap_micros, allowed_endpoints, agent_run_label, expires_at, created_at)
              VALUES (${keyId}, ${keyHash}, 'vk_', 'stripe', ${1_000_000 * USD}, NULL, '["POST /v1/charges"]', 'run/scale', ${NOW + 3600_000}, ${NOW})`;
    // A day of this key's traffic, settled, with its answers kept: what a busy key's batches run next to.
    await sql.unsafe(`INSERT INTO audit_log (ts, key_id, agent_run_label, vendor, method, path, outcome, estimated_micros, ledger_state, settled_micros, spend_day, idempotency_key)
                      SELECT ${NOW}, '${keyId}', 'run/scale', 'stripe', 'POST', '/v1/charges', 'forwarded', 0, 'settled', 0, '2026-01-01', 'seed-' || g FROM generate_series(1, ${SEEDED}) g`);
    await sql.unsafe(`INSERT INTO idempotency_records (key_id, idem_key, request_hash, state, audit_id, reserved_micros, spend_day, updated_at, expires_at, status, headers, body)
                      SELECT '${keyId}', 'seed-' || g, 'h', 'completed', g, 0, '2026-01-01', ${NOW}, ${NOW + 86_400_000}, 200, '[]', decode(repeat('7b7d', 400), 'hex')
                        FROM generate_series(1, ${SEEDED}) g`);
  });
  afterAll(async () => {
    await sql?.close();
  });

  test(`${BATCHES} batches of ${PER_BATCH} guarded calls (admitted, then settled with their answers) next to ${SEEDED.toLocaleString("en")} rows`, async () => {
    const calls = BATCHES * PER_BATCH;
    const { result: ledger, read } = await countedReads(
      sql,
      url,
      async (own) => {
        const ledger = new PgLedger(own);
        const key = (await ledger.findKeyByHash(keyHash))!;
        for (let b = 0; b < BATCHES; b++) {
          const admitted = await Promise.all(Array.from({ length: PER_BATCH }, (_, i) => ledger.admit(key, { ...call, idempotencyKey: `b${b}-${i}` }, USD, NOW, guard(`b${b}-${i}`))));
          const held = admitted.map((a) => (a.kind === "reserved" ? a.reservation : null)).filter((r): r is Reservation => r !== null);
          expect(held.length).toBe(PER_BATCH);
          const body = new TextEncoder().encode(`{"id":"ch_${b}"}`);
          await Promise.all(held.map((r) => ledger.settle(r, { vendorStatus: 200, actualMicros: USD, vendorRequestId: "req", vendorObjectId: `ch_${b}`, latencyMs: 1 }, { status: 200, headers: [], body })));
        }
        return ledger;
      },
      (d) => d["idempotency_records updated"]! >= calls,
    );
    expect(ledger.batchedWrites).toBe(2 * BATCHES * PER_BATCH); // every write took the batched path
    expect(ledger.batchRollbacks).toBe(0);
    expect(read["idempotency_records updated"]).toBe(calls);
    expect(read["audit_log updated"]).toBe(calls);
    // A few index entries per call (its record looked up, then completed; its audit row settled), never a
    // scan: one batch scanning the key's records or the log would read 20,000 rows on its own.
    expect(read.idempotency_records).toBeLessThanOrEqual(4 * calls);
    expect(read.audit_log).toBeLessThanOrEqual(4 * calls);
    const [money] = await sql`SELECT spent_total_micros::float8 AS spent, reserved_total_micros::float8 AS reserved FROM vault_keys WHERE id = ${keyId}`;
    expect(money).toEqual({ spent: calls * USD, reserved: 0 });
  }, 60_000);
});

describe.skipIf(!postgresAvailable())("PostgreSQL audit pages by time read the window, not the log", () => {
  // 30 days of rows, one every 2 minutes; ids rise with time, as they do in a real log.
  const ROWS = 21_600;
  const START = Date.UTC(2026, 9, 1);
  const STEP = (30 * 86_400_000) / ROWS;
  let sql: Pg;
  let url: string;

  beforeAll(async () => {
    url = await freshDatabase("scale_audit");
    sql = openPostgres(url);
    await migratePostgres(sql);
    await sql.unsafe(`INSERT INTO audit_log (ts, key_id, agent_run_label, vendor, method, path, outcome, estimated_micros, ledger_state)
                      SELECT ${START} + (g::float8 * ${STEP})::bigint, 'key_' || (g % 50), 'run/' || (g % 50), 'stripe', 'POST', '/v1/charges', 'forwarded', 0, 'settled'
                        FROM generate_series(0, ${ROWS - 1}) g`);
    await sql.unsafe("VACUUM ANALYZE audit_log");
  });
  afterAll(async () => {
    await sql?.close();
  });

  test("the first page of one day two weeks back reads about that day's rows, and is that day's newest rows", async () => {
    const day = { since: new Date(START + 14 * 86_400_000).toISOString(), until: new Date(START + 15 * 86_400_000).toISOString() };
    const perDay = ROWS / 30;
    const { result: pages, read } = await countedReads(
      sql,
      url,
      async (own) => {
        const store = new PgAuditStore(pgOrm(own), own);
        const pages = [];
        for (let i = 0; i < 5; i++) pages.push(await store.page(parseAuditQuery(day), undefined, 101));
        return pages;
      },
      (d) => d.audit_log! > 0,
    );
    const [expected] = await sql`SELECT array_agg(id ORDER BY id DESC) AS ids FROM (SELECT id FROM audit_log WHERE ts >= ${Date.parse(day.since)} AND ts < ${Date.parse(day.until)} ORDER BY id DESC LIMIT 101) x`;
    for (const page of pages) expect(page.map((r) => Number(r.id))).toEqual(expected.ids.map(Number));
    // Five pages: the day's rows from the ts index and the page's rows, each time; walking the ids down
    // from the newest row would read the 16 newer days first (~11,500 rows a page).
    expect(read.audit_log).toBeLessThanOrEqual(5 * 2 * (perDay + 101));
  }, 60_000);
});
