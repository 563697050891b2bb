import type { SQL } from "bun";
import type { SpendChange } from "../domain/alerts.ts";
import type { Admission, AuditOutcome, CallFacts, LiveKey, RepeatGuard, Reservation, Settlement, StoredAnswer } from "../domain/ledger.ts";
import { utcDay } from "../domain/time.ts";
import type { PricedObject } from "../vendors/types.ts";
import type { PgCapAlerts } from "./pg-alerts.ts";
import { budgetIdsOver, dayState, decideOnKey, finishAudit, lockKey, type DayState, type KeyState } from "./pg-rows.ts";

/**
 * The batched path of PgLedger's group commit: a group of one key's writes decided in JS on the
 * rows read in ONE pipelined round trip under the key's row lock, and written in a second one —
 * a constant number of statements per batch instead of several per write. Only the common case
 * takes it (see batchable); anything else runs through PgLedger's per-write code.
 */

/** A ledger write as data, so a batch can decide it without running it. */
export type LedgerOp =
  | { kind: "admit"; key: LiveKey; call: CallFacts; micros: number; now: number; guard: RepeatGuard | null }
  | { kind: "refusal"; key: Pick<LiveKey, "id" | "agent_run_label"> | null; call: CallFacts; outcome: AuditOutcome; errorCode: string; now: number }
  | { kind: "finish"; r: Reservation; s: Settlement; state: "settled" | "released" | "unsettled"; errorCode: string | null; produced: PricedObject | null; answer: StoredAnswer | null };

/**
 * The ops of a group the batch can take, or null: budget holds and carried-over retries stay on the
 * per-write path, and so does a group whose admissions saw the key under different labels or vendors
 * (one budget query serves the batch) or where two writes share a repeat guard (their order on one
 * idempotency record matters). Whether the guards' records allow the batch is known only once the
 * key is locked (guardsClear).
 */
export function batchable(keyId: string, ops: readonly (LedgerOp | null)[]): LedgerOp[] | null {
  let admitted: LiveKey | null = null;
  const guarded = new Set<string>();
  for (const op of ops) {
    if (!op) return null;
    if (op.kind === "admit") {
      if (admitted && (admitted.vendor !== op.key.vendor || admitted.agent_run_label !== op.key.agent_run_label)) return null;
      admitted = op.key;
    }
    if (op.kind === "finish" && (op.r.keyId !== keyId || op.r.retryAuditId !== null || op.r.budgets.length > 0)) return null;
    const idem = guardOf(op)?.idemKey;
    if (idem !== undefined) {
      if (guarded.has(idem)) return null;
      guarded.add(idem);
    }
  }
  return ops as LedgerOp[];
}

const guardOf = (op: LedgerOp): RepeatGuard | null => (op.kind === "admit" ? op.guard : op.kind === "finish" ? op.r.guard : null);

/**
 * Whether the idempotency records read under the key's lock leave nothing for a guard to decide:
 * no record for any guarded admission (a repeat, an in-flight call, a conflict or an expired record
 * all take the per-write path), and each guarded finish's record still the one its admission wrote.
 */
export function guardsClear(ops: readonly LedgerOp[], records: readonly { idem_key: string; audit_id: unknown }[]): boolean {
  const auditOf = new Map(records.map((r) => [r.idem_key, Number(r.audit_id)]));
  return ops.every((op) => {
    if (op.kind === "admit" && op.guard) return !auditOf.has(op.guard.idemKey);
    if (op.kind === "finish" && op.r.guard) return auditOf.get(op.r.guard.idemKey) === op.r.auditId;
    return true;
  });
}

/** Columns of a new audit row, as insertAudit writes them. */
interface NewAudit {
  id: number;
  ts: number;
  key_id: string | null;
  agent_run_label: string | null;
  vendor: string;
  method: string;
  path: string;
  outcome: string;
  error_code: string | null;
  estimated_micros: number;
  ledger_state: string;
  spend_day: string | null;
  idempotency_key: string | null;
}

interface Day extends DayState {
  /** The row exists in the database (read in the first round trip) or is created by this batch. */
  exists: boolean;
  touched: boolean;
}

/**
 * Runs the ops in arrival order; returns each op's result (as the per-write code would), or null
 * before writing anything when the locked state shows the group needs the per-write path (budgets
 * over the label of an admission). Throws — rolling the whole transaction back — if what was written
 * is not what was decided.
 */
export async function runBatch(tx: SQL, queue: () => void, keyId: string, ops: readonly LedgerOp[], alerts: PgCapAlerts | null): Promise<unknown[] | null> {
  const admission = ops.find((o) => o.kind === "admit");
  const days = new Set<string>();
  let newRows = 0;
  let spends = false;
  for (const op of ops) {
    if (op.kind === "admit") days.add(utcDay(op.now));
    if (op.kind === "finish" && op.state !== "unsettled") days.add(op.r.day);
    if (op.kind !== "finish") newRows++;
    if (op.kind === "finish" && op.state === "settled" && op.s.actualMicros > 0) spends = true;
  }
  // First round trip, pipelined behind AUDIT_ORDER_LOCK (sent by PgLedger.tx): the key row lock, then
  // reads that each see the newest committed rows once it is granted (admitIn says why not joined).
  const idemKeys = ops.flatMap((op) => guardOf(op)?.idemKey ?? []);
  const [key, dayRows, budgetIds, thresholds, ids, guardRows] = await Promise.all([
    lockKey(tx, keyId),
    days.size ? tx`SELECT day, spent_micros, reserved_micros FROM key_spend_days WHERE key_id = ${keyId} AND day = ANY(${[...days]}::text[])` : [],
    admission ? budgetIdsOver(tx, admission.key) : [],
    alerts && spends ? alerts.thresholds(tx) : undefined,
    newRows ? tx`SELECT nextval('audit_log_id_seq') AS id FROM generate_series(1, ${newRows})` : [],
    // One primary-key probe per Idempotency-Key (LIMIT 1 keeps each one a probe): `idem_key = ANY(…)` was
    // planned as a scan of every record of the key, and a busy key holds a day of them.
    idemKeys.length
      ? tx`SELECT r.idem_key, r.audit_id FROM unnest(${idemKeys}::text[]) AS k(idem_key)
             CROSS JOIN LATERAL (SELECT idem_key, audit_id FROM idempotency_records WHERE key_id = ${keyId} AND idem_key = k.idem_key LIMIT 1) r`
      : [],
  ]);
  if (budgetIds.length > 0 || !guardsClear(ops, guardRows)) return null;
  if (!key && (admission || days.size)) throw new Error(`ledger: key ${keyId} vanished`);

  const dayOf = new Map<string, Day>();
  for (const r of dayRows) dayOf.set(r.day, { ...dayState(r), exists: true, touched: false });
  const day = (d: string): Day => dayOf.get(d) ?? dayOf.set(d, { spent: 0, reserved: 0, exists: false, touched: false }).get(d)!;
  const start = key ? { spent: key.spentTotalMicros, reserved: key.reservedTotalMicros } : null;
  const idList = (ids as { id: unknown }[]).map((r) => Number(r.id));
  const inserts: NewAudit[] = [];
  /** Each finished call's audit row, written in the second round trip. */
  const finished: (() => Promise<void>)[] = [];
  const priced = new Map<string, PricedObject>();
  const records = new RecordWrites();
  // Alerts cost round trips only where one may be raised (a day's first refusal, a settlement's spend):
  // raised after the writes, in arrival order; a threshold costs one only when crossed (thresholds read above).
  const alertsDue: (() => Promise<boolean>)[] = [];
  const hitDays = new Set<string>();

  const audit = (now: number, k: Pick<LiveKey, "id" | "agent_run_label"> | null, call: CallFacts, outcome: string, errorCode: string | null, estimate: number, state: string, d: string | null): number => {
    const id = idList[inserts.length]!;
    inserts.push({ id, ts: now, key_id: k?.id ?? null, agent_run_label: k?.agent_run_label ?? null, vendor: call.vendor, method: call.method, path: call.path,
      outcome, error_code: errorCode, estimated_micros: estimate, ledger_state: state, spend_day: d, idempotency_key: call.idempotencyKey });
    return id;
  };

  const results = ops.map((op): unknown => {
    if (op.kind === "refusal") return audit(op.now, op.key, op.call, op.outcome, op.errorCode, 0, "none", null);
    if (op.kind === "admit") return admit(op, key!);
    finish(op, key);
    return undefined;
  });

  function admit(op: Extract<LedgerOp, { kind: "admit" }>, k: KeyState): Admission {
    const today = utcDay(op.now);
    const row = day(today);
    const decided = decideOnKey(k, row, op.micros, op.now);
    if (decided.kind === "closed") {
      const auditId = audit(op.now, op.key, op.call, decided.outcome, decided.errorCode, op.micros, "none", null);
      return { kind: "refused", outcome: decided.outcome, auditId, remainingMicros: 0 };
    }
    if (decided.kind === "cap_hit") {
      const auditId = audit(op.now, op.key, op.call, "cap_hit", "cap_exceeded", op.micros, "none", today);
      // Only a day's first refusal can raise cap.hit: its mark makes later ones of this batch no-ops anyway.
      if (alerts && !hitDays.has(today)) {
        hitDays.add(today);
        const scope = { kind: "key" as const, id: keyId, label: op.key.agent_run_label };
        alertsDue.push(() => alerts.hit(tx, scope, decided.heldMicros, op.micros, k.dailyCapMicros, today, op.now));
      }
      return { kind: "refused", outcome: "cap_hit", auditId, remainingMicros: decided.left, capScope: { kind: "key" } };
    }
    const auditId = audit(op.now, op.key, op.call, "forwarded", null, op.micros, op.micros > 0 ? "reserved" : "none", today);
    if (op.guard) records.admitted(op.guard, auditId, op.micros, today, op.now);
    if (op.micros > 0) {
      k.reservedTotalMicros += op.micros;
      row.reserved += op.micros;
      row.exists = row.touched = true;
    }
    return { kind: "reserved", reservation: { auditId, keyId, day: today, micros: op.micros, remainingMicros: decided.left - op.micros, retryAuditId: null, guard: op.guard, budgets: [] } };
  }

  function finish(op: Extract<LedgerOp, { kind: "finish" }>, k: KeyState | undefined): void {
    const { r, s } = op;
    const actual = op.state === "settled" ? s.actualMicros : 0;
    if (r.guard) records.finished(r.guard, r.auditId, op.state, op.answer);
    if (op.state === "unsettled") {
      finished.push(() => finishAudit(tx, r.auditId, "upstream_error", "unsettled", null, s, s.vendorObjectId, op.errorCode));
      return;
    }
    finished.push(() => finishAudit(tx, r.auditId, "forwarded", op.state, actual, s, s.vendorObjectId, null));
    if (op.produced) priced.set(op.produced.objectId, op.produced);
    if (!(r.micros > 0 || actual > 0)) return;
    k!.reservedTotalMicros -= r.micros;
    k!.spentTotalMicros += actual;
    const row = day(r.day);
    if (!row.exists) return; // as finish's UPDATE of a missing day row: nothing to move, no alert
    row.reserved -= r.micros;
    row.spent += actual;
    row.touched = true;
    if (alerts && actual > 0) {
      const changes: SpendChange[] = [{ scope: { kind: "key", id: keyId, label: k!.label }, before: row.spent - actual, after: row.spent, capMicros: k!.dailyCapMicros }];
      alertsDue.push(() => alerts.spent(tx, changes, r.day, Date.now(), thresholds));
    }
  }

  // Second round trip: everything decided, pipelined; each money statement returns what it wrote.
  const writes: Promise<unknown>[] = [];
  if (inserts.length) {
    writes.push(tx`INSERT INTO audit_log (id, ts, key_id, agent_run_label, vendor, method, path, outcome, error_code, estimated_micros, ledger_state, spend_day, idempotency_key)
                   SELECT * FROM jsonb_to_recordset(${JSON.stringify(inserts)}::text::jsonb) AS x(id bigint, ts bigint, key_id text, agent_run_label text, vendor text, method text,
                     path text, outcome text, error_code text, estimated_micros bigint, ledger_state text, spend_day text, idempotency_key text)`);
  }
  if (key && start && (key.spentTotalMicros !== start.spent || key.reservedTotalMicros !== start.reserved)) {
    writes.push(
      expectWritten(
        `key ${keyId} totals`,
        tx`UPDATE vault_keys SET reserved_total_micros = reserved_total_micros + ${key.reservedTotalMicros - start.reserved}, spent_total_micros = spent_total_micros + ${key.spentTotalMicros - start.spent}
            WHERE id = ${keyId} RETURNING spent_total_micros AS spent, reserved_total_micros AS reserved`,
        { spent: key.spentTotalMicros, reserved: key.reservedTotalMicros },
      ),
    );
  }
  const before = new Map((dayRows as any[]).map((r) => [r.day as string, dayState(r)]));
  for (const [d, row] of dayOf) {
    if (!row.touched) continue;
    const was = before.get(d);
    const want = { spent: row.spent, reserved: row.reserved };
    writes.push(
      expectWritten(
        `key ${keyId} day ${d}`,
        was
          ? tx`UPDATE key_spend_days SET spent_micros = spent_micros + ${row.spent - was.spent}, reserved_micros = reserved_micros + ${row.reserved - was.reserved}
                WHERE key_id = ${keyId} AND day = ${d} RETURNING spent_micros AS spent, reserved_micros AS reserved`
          : tx`INSERT INTO key_spend_days (key_id, day, spent_micros, reserved_micros) VALUES (${keyId}, ${d}, ${row.spent}, ${row.reserved})
                RETURNING spent_micros AS spent, reserved_micros AS reserved`,
        want,
      ),
    );
  }
  // One statement per settled row, as the per-write path writes it (a multi-row join was planned as a
  // scan of the whole log while its statistics lagged, RecordWrites).
  for (const write of finished) writes.push(write());
  if (priced.size) {
    const rows = [...priced.values()].map((o) => ({ object_id: o.objectId, kind: o.kind, amount: o.amount, currency: o.currency, counted_micros: o.countedMicros }));
    writes.push(tx`INSERT INTO priced_objects (key_id, object_id, kind, amount, currency, counted_micros, updated_at)
                   SELECT ${keyId}, x.*, ${Date.now()}::bigint FROM jsonb_to_recordset(${JSON.stringify(rows)}::text::jsonb) AS x(object_id text, kind text, amount bigint, currency text, counted_micros bigint)
                   ON CONFLICT (key_id, object_id) DO UPDATE SET kind = EXCLUDED.kind, amount = EXCLUDED.amount, currency = EXCLUDED.currency,
                     counted_micros = EXCLUDED.counted_micros, updated_at = EXCLUDED.updated_at`);
  }
  writes.push(...records.write(tx, keyId));
  await Promise.all(writes);

  for (const raise of alertsDue) if (await raise()) queue();
  return results;
}

/** The invariant, checked on what was written: the row holds exactly what the batch decided on (else the batch rolls back). */
async function expectWritten(what: string, q: Promise<any[]>, want: { spent: number; reserved: number }): Promise<void> {
  const [row] = await q;
  const got = { spent: Number(row?.spent), reserved: Number(row?.reserved) };
  if (got.spent !== want.spent || got.reserved !== want.reserved) {
    throw new Error(`ledger invariant broken: ${what} hold ${JSON.stringify(got)}, decided ${JSON.stringify(want)}`);
  }
}

/**
 * What a batch does to its guards' idempotency records: exactly what admitIn, finish and keepUnsettled
 * write. The inserts are one multi-row statement; each completion, `unknown` mark and delete is a
 * statement of its own, pipelined with the rest, because only a statement naming the whole primary key
 * is planned as a probe of that one row whatever the statistics say (a multi-row join was planned as a
 * scan of every record of the key). Each only touches the record guardsClear saw (absent for an insert,
 * this reservation's for the rest), and must touch every one.
 */
class RecordWrites {
  private readonly inserts: { idem_key: string; request_hash: string; audit_id: number; reserved_micros: number; spend_day: string; updated_at: number; expires_at: number }[] = [];
  private readonly finishes: { idemKey: string; auditId: number; state: "settled" | "released" | "unsettled"; answer: StoredAnswer | null; at: number }[] = [];

  admitted(g: RepeatGuard, auditId: number, micros: number, day: string, now: number): void {
    this.inserts.push({ idem_key: g.idemKey, request_hash: g.requestHash, audit_id: auditId, reserved_micros: micros, spend_day: day, updated_at: now, expires_at: now + g.ttlMs });
  }

  /** A settled or released call keeps its answer for replays (none kept: the record goes); an unsettled one's outcome is unknown. */
  finished(g: RepeatGuard, auditId: number, state: "settled" | "released" | "unsettled", answer: StoredAnswer | null): void {
    this.finishes.push({ idemKey: g.idemKey, auditId, state, answer, at: Date.now() });
  }

  write(tx: SQL, keyId: string): Promise<void>[] {
    const out: Promise<void>[] = [];
    if (this.inserts.length) {
      out.push(expectRows(`key ${keyId} idempotency records inserted`, this.inserts.length,
        tx`INSERT INTO idempotency_records (key_id, idem_key, request_hash, state, audit_id, reserved_micros, spend_day, updated_at, expires_at)
           SELECT ${keyId}, x.idem_key, x.request_hash, 'in_flight', x.audit_id, x.reserved_micros, x.spend_day, x.updated_at, x.expires_at
             FROM jsonb_to_recordset(${JSON.stringify(this.inserts)}::text::jsonb) AS x(idem_key text, request_hash text, audit_id bigint, reserved_micros bigint, spend_day text, updated_at bigint, expires_at bigint)
           ON CONFLICT DO NOTHING RETURNING 1`));
    }
    for (const f of this.finishes) {
      const what = `key ${keyId} idempotency record ${f.state === "unsettled" ? "left unknown" : f.answer ? "completed" : "deleted"}`;
      const { idemKey, auditId, answer, at } = f;
      out.push(expectRows(what, 1,
        f.state === "unsettled"
          ? tx`UPDATE idempotency_records SET state = 'unknown', updated_at = ${at} WHERE key_id = ${keyId} AND idem_key = ${idemKey} AND audit_id = ${auditId} RETURNING 1`
          : answer
            ? tx`UPDATE idempotency_records SET state = 'completed', status = ${answer.status}, headers = ${JSON.stringify(answer.headers)}, body = ${Buffer.from(answer.body)}, updated_at = ${at}
                  WHERE key_id = ${keyId} AND idem_key = ${idemKey} AND audit_id = ${auditId} RETURNING 1`
            : tx`DELETE FROM idempotency_records WHERE key_id = ${keyId} AND idem_key = ${idemKey} AND audit_id = ${auditId} RETURNING 1`));
    }
    return out;
  }
}

/** A record missing here (pruneRepeats deletes expired ones without the key's lock) rolls the batch back: its writes then run one at a time. */
async function expectRows(what: string, want: number, q: Promise<unknown[]>): Promise<void> {
  const got = (await q).length;
  if (got !== want) throw new Error(`ledger invariant broken: ${what}: ${got} of ${want}`);
}
