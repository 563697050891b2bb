/**
 * The audit store on both backends (src/domain/audit.ts): the same log gives the same pages,
 * cursors, filters, summaries, spend totals, daily spend, exports and retention on SQLite and on
 * PostgreSQL; the filters stay on their indexes; and on PostgreSQL a first page never lets a
 * cursor skip a row that commits late with a smaller id.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawn } from "bun";
import { join } from "node:path";
import { migratePostgres, openPostgres, type Pg } from "../src/db/pg.ts";
import { AuditService, parseAuditQuery, type AuditStore } from "../src/domain/audit.ts";
import { AuditRetention, PRUNE_BATCH_ROWS } from "../src/domain/retention.ts";
import { auditExportResponse } from "../src/http/audit-export.ts";
import { closeBackend, openBackend, pgOrm, type Backend, type PgBackend } from "../src/store/backend.ts";
import { AUDIT_ORDER_LOCK, PgAuditStore } from "../src/store/pg/audit.ts";
import { SqliteAuditStore } from "../src/store/sqlite/audit.ts";
import { BACKENDS, openTestBackend, type BackendKind } from "./backends.ts";
import { freshDatabase } from "./pg.ts";

const USD = 1_000_000;
const DAY = 86_400_000;
const T = Date.parse("2026-11-20T00:00:00Z");
const H = 3_600_000;

// id: ts, key, label, vendor, outcome, estimated, settled, ledger state
const ROWS: [number, string | null, string | null, string, string, number, number | null, string][] = [
  /* 1 */ [T + 1 * H, "key_a", "airflow-billing/run-1", "stripe", "forwarded", 2 * USD, 2 * USD, "settled"],
  /* 2 */ [T + 2 * H, "key_a", "airflow-billing/run-1", "stripe", "cap_hit", 5 * USD, null, "none"],
  /* 3 */ [T + 3 * H, "key_b", "airflow-billing/run-2", "twilio", "forwarded", USD / 2, null, "reserved"],
  /* 4 */ [T + DAY + 1 * H, "key_b", "airflow-billing/run-2", "twilio", "forwarded", 1_250_000, 1_250_000, "settled"],
  /* 5 */ [T + DAY + 2 * H, "key_c", "Air/1", "resend", "upstream_error", 300_000, null, "unsettled"],
  /* 6 */ [T + DAY + 3 * H, null, null, "stripe", "invalid_key", 0, null, "none"],
  /* 7 */ [T + 2 * DAY, "key_d", "airflow-billing0", "stripe", "forwarded", 700_000, 700_000, "settled"],
  /* 8 */ [T + 2 * DAY + 1, "key_a", "airflow-billing/run-1", "stripe", "replayed", 0, null, "none"],
  /* 9 */ [T + 2 * DAY + 2, "key_e", "aaa/x", "stripe", "endpoint_denied", 0, null, "none"],
];
// key: label, vendor, issued by
const KEYS: [string, string, string, string | null][] = [
  ["key_a", "airflow-billing/run-1", "stripe", "tok_1"],
  ["key_b", "airflow-billing/run-2", "twilio", "tok_1"],
  ["key_c", "Air/1", "resend", "tok_2"],
  ["key_d", "airflow-billing0", "stripe", null],
  ["key_e", "aaa/x", "stripe", null],
];

let linguistic = 0;
/**
 * A fresh backend; on PostgreSQL a database whose default collation is linguistic (ICU root, like the
 * en_US.UTF-8 of most installations: case folded, punctuation weighed late), where a label prefix
 * filter and the order of ties would go wrong unless the migrations make the audit log bytewise.
 */
async function openAuditBackend(kind: BackendKind, name: string): Promise<Backend & { close(): Promise<void> }> {
  if (kind === "sqlite") return openTestBackend(kind, name);
  const url = await freshDatabase(name);
  const db = `${name}_icu_${process.pid}_${++linguistic}`;
  const admin = openPostgres(url);
  await admin.unsafe(`CREATE DATABASE ${db} LOCALE_PROVIDER icu ICU_LOCALE 'und' TEMPLATE template0`).finally(() => admin.close());
  const b = await openBackend({ dataDir: "", databaseUrl: url.replace(/[^/]+$/, db) }); // PostgreSQL: no data dir
  return Object.assign(b, { close: () => closeBackend(b) });
}

describe.each(BACKENDS)("audit store on %s", (kind) => {
  let backend: Awaited<ReturnType<typeof openTestBackend>>;
  let store: AuditStore;
  let audit: AuditService;
  /** Runs one statement with $1… parameters on either backend. */
  let exec: (q: string, params?: unknown[]) => Promise<unknown>;
  const ids = async (f: Record<string, string>) => (await audit.page(parseAuditQuery(f))).rows.map((r) => r.id);

  beforeAll(async () => {
    backend = await openAuditBackend(kind, "audit");
    const b = backend;
    if (b.kind === "sqlite") {
      store = new SqliteAuditStore(b.db);
      exec = async (q, p = []) => b.db.sqlite.prepare(q.replace(/\$(\d+)/g, "?$1")).run(...(p as never[]));
    } else {
      store = new PgAuditStore(b.orm, b.sql);
      exec = (q, p = []) => b.sql.unsafe(q, p as never[]);
    }
    audit = new AuditService(store);
    for (const [id, label, vendor, by] of KEYS) {
      await exec(
        `INSERT INTO vault_keys (id, key_hash, key_hint, vendor, daily_cap_micros, allowed_endpoints, agent_run_label, expires_at, created_at, issued_by_token_id)
         VALUES ($1, $2, 'kb_', $3, 0, '[]', $4, 0, 0, $5)`,
        [id, `hash_${id}`, vendor, label, by],
      );
    }
    for (const r of ROWS) {
      await exec(
        `INSERT INTO audit_log (ts, key_id, agent_run_label, vendor, method, path, outcome, estimated_micros, settled_micros, ledger_state)
         VALUES ($1, $2, $3, $4, 'POST', '/v1/x', $5, $6, $7, $8)`,
        r,
      );
    }
  }, 60_000);
  afterAll(() => backend.close());

  test.each([
    ["no filter: every row, newest first", {}, [9, 8, 7, 6, 5, 4, 3, 2, 1]],
    ["key_id", { key_id: "key_a" }, [8, 2, 1]],
    ["label, exact", { label: "airflow-billing/run-1" }, [8, 2, 1]],
    ["label prefix: not the label that merely sorts next", { label: "airflow-billing/*" }, [8, 4, 3, 2, 1]],
    ["label prefix without a slash", { label: "airflow-billing*" }, [8, 7, 4, 3, 2, 1]],
    ["label prefix is case-sensitive, whatever the collation", { label: "Air*" }, [5]],
    ["label * alone: every row, unlabelled ones too", { label: "*" }, [9, 8, 7, 6, 5, 4, 3, 2, 1]],
    ["vendor", { vendor: "twilio" }, [4, 3]],
    ["outcome", { outcome: "forwarded" }, [7, 4, 3, 1]],
    ["label and outcome", { label: "airflow-billing/*", outcome: "forwarded" }, [4, 3, 1]],
    ["key and outcome", { key_id: "key_a", outcome: "cap_hit" }, [2]],
    ["since and until: [since, until)", { since: new Date(T + DAY + H).toISOString(), until: new Date(T + 2 * DAY).toISOString() }, [6, 5, 4]],
    // PostgreSQL reads a window nearer its start than the present through the ts index, a wider one down the ids: the same rows.
    ["since and until, a window reaching the present", { since: new Date(T + DAY + H).toISOString(), until: new Date(Date.now() + DAY).toISOString() }, [9, 8, 7, 6, 5, 4]],
    ["since and until with an outcome", { since: new Date(T).toISOString(), until: new Date(T + 2 * DAY + 2).toISOString(), outcome: "forwarded" }, [7, 4, 3, 1]],
  ] as const)("%s", async (_name, filter, expected) => {
    expect(await ids(filter)).toEqual([...expected]);
  });

  test("an issuer reads only the rows of the keys it issued", async () => {
    const page = await audit.page({ ...parseAuditQuery({}), issuedBy: "tok_1" });
    expect(page.rows.map((r) => r.id)).toEqual([8, 4, 3, 2, 1]);
    expect((await audit.spend(T, T + 3 * DAY, undefined, "tok_2")).by_key.map((k) => k.key_id)).toEqual(["key_c"]);
  });

  test("cursors walk every row once, newest first, and stop", async () => {
    const seen: number[] = [];
    const cursors: (string | null)[] = [];
    let cursor: string | undefined;
    do {
      const page = await audit.page(parseAuditQuery({ limit: "4", ...(cursor ? { cursor } : {}) }));
      seen.push(...page.rows.map((r) => r.id));
      cursors.push(page.nextCursor);
      cursor = page.nextCursor ?? undefined;
    } while (cursor);
    expect(seen).toEqual([9, 8, 7, 6, 5, 4, 3, 2, 1]);
    expect(cursors).toEqual(["6", "2", null]);
  });

  test("cursors walk a time window once, newest first, and stop", async () => {
    const seen: number[] = [];
    let cursor: string | undefined;
    const window = { since: new Date(T + 2 * H).toISOString(), until: new Date(T + 2 * DAY + 2).toISOString() };
    do {
      const page = await audit.page(parseAuditQuery({ ...window, limit: "2", ...(cursor ? { cursor } : {}) }));
      seen.push(...page.rows.map((r) => r.id));
      cursor = page.nextCursor ?? undefined;
    } while (cursor);
    expect(seen).toEqual([8, 7, 6, 5, 4, 3, 2]);
  });

  test("rows read back as stored", async () => {
    const [row] = (await audit.page(parseAuditQuery({ key_id: "key_c" }))).rows;
    expect(row).toEqual({
      id: 5, ts: T + DAY + 2 * H, keyId: "key_c", agentRunLabel: "Air/1", vendor: "resend", method: "POST", path: "/v1/x", outcome: "upstream_error",
      errorCode: null, vendorStatus: null, estimatedMicros: 300_000, settledMicros: null, ledgerState: "unsettled", spendDay: null,
      vendorRequestId: null, vendorObjectId: null, idempotencyKey: null, latencyMs: null, replayOf: null,
    });
  });

  test("the summary counts calls, settled and held money, refusals and cap hits of the whole filter", async () => {
    expect(await audit.summary(parseAuditQuery({ label: "airflow-billing/*" }))).toEqual({ calls: 5, settledMicros: 3_250_000, reservedMicros: 500_000, refused: 1, capHits: 1 });
    expect(await audit.summary(parseAuditQuery({}))).toEqual({ calls: 9, settledMicros: 3_950_000, reservedMicros: 800_000, refused: 3, capHits: 1 });
    expect(await audit.summary(parseAuditQuery({ key_id: "nobody" }))).toEqual({ calls: 0, settledMicros: 0, reservedMicros: 0, refused: 0, capHits: 0 });
  });

  test("spend per label and per key: most settled first, ties in code point order; unknown keys left out", async () => {
    const s = await audit.spend(T, T + 3 * DAY);
    expect(s.by_label).toEqual([
      { agent_run_label: "airflow-billing/run-1", spent_usd: 2, reserved_usd: 0, calls: 3, cap_hits: 1 },
      { agent_run_label: "airflow-billing/run-2", spent_usd: 1.25, reserved_usd: 0.5, calls: 2, cap_hits: 0 },
      { agent_run_label: "airflow-billing0", spent_usd: 0.7, reserved_usd: 0, calls: 1, cap_hits: 0 },
      { agent_run_label: "Air/1", spent_usd: 0, reserved_usd: 0.3, calls: 1, cap_hits: 0 },
      { agent_run_label: "aaa/x", spent_usd: 0, reserved_usd: 0, calls: 1, cap_hits: 0 },
    ]);
    expect(s.by_key.map((k) => [k.key_id, k.agent_run_label, k.vendor, k.spent_usd])).toEqual([
      ["key_a", "airflow-billing/run-1", "stripe", 2],
      ["key_b", "airflow-billing/run-2", "twilio", 1.25],
      ["key_d", "airflow-billing0", "stripe", 0.7],
      ["key_c", "Air/1", "resend", 0],
      ["key_e", "aaa/x", "stripe", 0],
    ]);
    const window = await audit.spend(T + DAY, T + 2 * DAY, "airflow-billing/*");
    expect([window.since, window.until, window.by_key]).toEqual([
      "2026-11-21T00:00:00.000Z",
      "2026-11-22T00:00:00.000Z",
      [{ key_id: "key_b", agent_run_label: "airflow-billing/run-2", vendor: "twilio", spent_usd: 1.25, reserved_usd: 0, calls: 1, cap_hits: 0 }],
    ]);
  });

  test("daily spend: settled micro-dollars per UTC day and label", async () => {
    expect(await audit.dailySpend(T)).toEqual([
      { day: "2026-11-20", label: "airflow-billing/run-1", micros: 2 * USD },
      { day: "2026-11-21", label: "airflow-billing/run-2", micros: 1_250_000 },
      { day: "2026-11-22", label: "airflow-billing0", micros: 700_000 },
    ]);
    expect(await audit.dailySpend(T + DAY, "airflow-billing/*")).toEqual([{ day: "2026-11-21", label: "airflow-billing/run-2", micros: 1_250_000 }]);
  });

  test("exports stream every matching row in batches, the same CSV on both backends", async () => {
    const all: number[] = [];
    for await (const r of audit.all(parseAuditQuery({ label: "airflow-billing/*", format: "csv" }))) all.push(r.id);
    expect(all).toEqual([8, 4, 3, 2, 1]);
    const csv = await auditExportResponse(audit.all(parseAuditQuery({ key_id: "key_b" })), "csv").text();
    expect(csv.split("\r\n").map((l) => l.split(",").slice(0, 4).join(","))).toEqual(["id,time,key_id,agent_run_label", "4,2026-11-21T01:00:00.000Z,key_b,airflow-billing/run-2", "3,2026-11-20T03:00:00.000Z,key_b,airflow-billing/run-2", ""]);
  });

  test("retention prunes only rows older than the cutoff, in batches, with the stored answers that point at them", async () => {
    const old = T - 1000 * DAY;
    for (let i = 0; i < PRUNE_BATCH_ROWS + 7; i++) {
      await exec(`INSERT INTO audit_log (ts, vendor, method, path, outcome) VALUES ($1, 'stripe', 'POST', '/v1/charges', 'forwarded')`, [old + i]);
    }
    const [firstOld] = (await audit.page(parseAuditQuery({ until: new Date(old + 1).toISOString() }))).rows;
    for (const [idem, auditId] of [["old", firstOld!.id], ["new", 1]] as const) {
      await exec(
        `INSERT INTO idempotency_records (key_id, idem_key, request_hash, state, audit_id, reserved_micros, spend_day, updated_at, expires_at)
         VALUES ('key_a', $1, 'h', 'completed', $2, 0, '2026-01-01', 0, 0)`,
        [idem, auditId],
      );
    }
    const retention = new AuditRetention(store, 900 * DAY, () => T);
    expect(await retention.pruneBatch(T - 900 * DAY)).toBe(PRUNE_BATCH_ROWS); // one transaction never takes more
    expect(await retention.run()).toBe(7);
    expect(await retention.run()).toBe(0);
    expect(await ids({})).toEqual([9, 8, 7, 6, 5, 4, 3, 2, 1]);
    const left = backend.kind === "sqlite" ? backend.db.sqlite.query("SELECT idem_key FROM idempotency_records").all() : await backend.sql`SELECT idem_key FROM idempotency_records`;
    expect([...left]).toEqual([{ idem_key: "new" }]);
    // Two replicas pruning the same backlog at once: every old row goes exactly once, nothing fails.
    for (let i = 0; i < 2 * PRUNE_BATCH_ROWS + 3; i++) {
      await exec(`INSERT INTO audit_log (ts, vendor, method, path, outcome) VALUES ($1, 'stripe', 'POST', '/v1/charges', 'forwarded')`, [old + i]);
    }
    const errors: string[] = [];
    const replicas = [0, 1].map(() => new AuditRetention(store, 900 * DAY, () => T, (m) => errors.push(m)));
    const pruned = await Promise.all(replicas.map((r) => r.run()));
    expect([pruned[0]! + pruned[1]!, errors]).toEqual([2 * PRUNE_BATCH_ROWS + 3, []]);
    expect(await ids({})).toEqual([9, 8, 7, 6, 5, 4, 3, 2, 1]);

    const forever = new AuditRetention(store, null, () => T);
    forever.start();
    expect(await forever.run()).toBe(0);
    await forever.stop();
  });

  // Ids are taken at INSERT, not at COMMIT: a row can commit after a larger id was read (PgAuditStore's comment).
  test.if(kind === "postgres")("a first page stops below a writer in flight: a row committing late below a shown id is never passed over", async () => {
    const b = backend as PgBackend;
    const insert = (tx: Pg, path: string) => tx`INSERT INTO audit_log (ts, vendor, method, path, outcome) VALUES (${T + 3 * DAY}, 'stripe', 'POST', ${path}, 'forwarded') RETURNING id`;
    let release!: () => void;
    let taken!: (id: number) => void;
    const lateId = new Promise<number>((r) => (taken = r));
    const late = b.sql.begin(async (tx) => {
      await tx.unsafe(AUDIT_ORDER_LOCK); // as every ledger transaction does first
      taken(Number((await insert(tx, "/v1/late"))[0].id));
      await new Promise<void>((r) => (release = r));
    });
    const held = await lateId;
    const [{ id: after }] = await insert(b.sql, "/v1/after"); // committed first, with the larger id
    expect((await audit.page(parseAuditQuery({ limit: "1" }))).rows.map((r) => r.id)).toEqual([9]); // neither yet: 'after' waits for 'late'
    release();
    await late;
    expect((await audit.page(parseAuditQuery({ limit: "2" }))).rows.map((r) => r.id)).toEqual([Number(after), held]);
    await b.sql`DELETE FROM audit_log WHERE ts = ${T + 3 * DAY}`;
  });
});

describe.each(BACKENDS)("audit query plans on %s", (kind) => {
  let backend: Awaited<ReturnType<typeof openTestBackend>>;
  let plan: (f: Record<string, string>) => Promise<string>;

  // A big log: 500 runs, 2 000 keys, 1 % cap hits, as an index choice looks with real statistics (PostgreSQL's autovacuum
  // analyzes; SQLite is never analyzed and plans by its heuristics).
  beforeAll(async () => {
    backend = await openAuditBackend(kind, "audit_plans");
    const b = backend;
    const rows = (i: string) => `${i} * 1000, 'key_' || (${i} % 2000), 'run-' || (${i} % 500), 'stripe', 'POST', '/v1/x', CASE WHEN ${i} % 100 = 0 THEN 'cap_hit' ELSE 'forwarded' END`;
    const insert = "INSERT INTO audit_log (ts, key_id, agent_run_label, vendor, method, path, outcome)";
    if (b.kind === "sqlite") {
      const store = new SqliteAuditStore(b.db);
      b.db.sqlite.run(`WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 50000) ${insert} SELECT ${rows("i")} FROM s`);
      plan = async (f) => {
        const q = store.pageQuery(parseAuditQuery(f), undefined, 101).toSQL();
        return (b.db.sqlite.query(`EXPLAIN QUERY PLAN ${q.sql}`).all(...(q.params as never[])) as { detail: string }[]).map((r) => r.detail).join(" | ");
      };
    } else {
      const store = new PgAuditStore(b.orm, b.sql);
      await b.sql.unsafe(`${insert} SELECT ${rows("i")} FROM generate_series(1, 50000) i`);
      await b.sql`ANALYZE audit_log`;
      plan = async (f) => {
        const q = store.pageQuery(parseAuditQuery(f), await store.horizon() + 1, 101).toSQL();
        return ((await b.sql.unsafe(`EXPLAIN ${q.sql}`, q.params as never[])) as { "QUERY PLAN": string }[]).map((r) => r["QUERY PLAN"].trim()).join(" | ");
      };
    }
  }, 60_000);
  afterAll(() => backend.close());

  // With a key or a label, the outcome must not take over: 9 outcomes, ~all rows "forwarded".
  test.each([
    [{ label: "run-7" }, "audit_label"],
    [{ label: "run-499*" }, "audit_label"],
    [{ label: "run-7", outcome: "cap_hit" }, "audit_label"],
    [{ label: "run-499*", outcome: "forwarded" }, "audit_label"],
    [{ key_id: "key_7" }, "audit_key"],
    [{ key_id: "key_7", outcome: "cap_hit" }, "audit_key"],
    [{ outcome: "cap_hit" }, "audit_outcome"],
    [{ since: "1970-01-01T00:10:00Z", until: "1970-01-01T00:12:00Z" }, "audit_ts"],
  ] as const)("%o is planned on %s", async (filter, index) => {
    const p = await plan(filter);
    expect(p).toMatch(kind === "sqlite" ? `INDEX ${index} ` : new RegExp(`(on|using) ${index} `));
    expect(p).not.toMatch(/Seq Scan|SCAN audit_log(?! USING)/);
  });
});

describe.skipIf(!BACKENDS.includes("postgres"))("audit pages while three replicas write", () => {
  // Real ledgers in their own processes (test/pg-replica-worker.ts), one key each, so their
  // transactions interleave: without the horizon, first pages read meanwhile miss thousands of rows.
  test("every first page holds every row that ever exists between its lowest and highest id", async () => {
    const url = await freshDatabase("audit_replicas");
    const sql = openPostgres(url);
    await migratePostgres(sql);
    const store = new PgAuditStore(pgOrm(sql), sql);
    for (const i of [0, 1, 2]) {
      const hash = new Bun.CryptoHasher("sha256").update(`vk_key_r${i}`).digest("hex");
      await sql`INSERT INTO vault_keys (id, key_hash, key_hint, vendor, daily_cap_micros, allowed_endpoints, agent_run_label, expires_at, created_at)
                VALUES (${`key_r${i}`}, ${hash}, 'vk_', 'stripe', ${1000 * USD}, '["POST /v1/charges"]', 'run', ${Date.now() + H}, ${Date.now()})`;
    }
    const worker = join(import.meta.dir, "pg-replica-worker.ts");
    const replicas = [0, 1, 2].map((i) => spawn([process.execPath, worker, url, `key_r${i}`, "200", String(USD), "settle"], { stdout: "ignore", stderr: "inherit" }));
    const pages: number[][] = [];
    let writing = true;
    const reader = (async () => {
      while (writing) pages.push((await store.page(parseAuditQuery({}), undefined, 1000)).map((r) => r.id));
    })();
    expect(await Promise.all(replicas.map((p) => p.exited))).toEqual([0, 0, 0]);
    writing = false;
    await reader;
    const final = (await sql`SELECT id FROM audit_log`).map((r: { id: string }) => Number(r.id));
    await sql.close();
    expect(final).toHaveLength(600);
    const missed = pages.flatMap((ids) => {
      const shown = new Set(ids);
      return final.filter((id: number) => ids.length > 0 && id >= ids.at(-1)! && id <= ids[0]! && !shown.has(id));
    });
    expect(pages.length).toBeGreaterThan(10);
    expect(missed).toEqual([]);
  }, 60_000);
});
