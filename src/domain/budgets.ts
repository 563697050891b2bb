import type { Database, Statement } from "bun:sqlite";
import { z } from "zod";
import type { BudgetRow } from "../db/schema.ts";
import { ApiError, fieldIssues, validationError } from "../errors.ts";
import { newId } from "../ids.ts";
import { microsToUsd } from "../money.ts";
import { VENDORS } from "../vendors/types.ts";
import type { Actor, NewEvent } from "./events.ts";
import { MAX_LABEL_LENGTH, usd } from "./keys.ts";
import { utcDay } from "./time.ts";

/**
 * Pooled budgets (SPEC §7): a daily cap shared by every key whose run label starts with a
 * prefix, optionally of one vendor. BudgetService is the management side; BudgetLedger holds
 * the statements the ledger runs inside its admission and settlement transactions.
 */

const name = z
  .string({ error: "name must be a string" })
  .trim()
  .min(1, "name must not be empty")
  .max(100, "name must be at most 100 characters");
const labelPrefix = z
  .string({ error: "label_prefix must be a string" })
  .min(1, "label_prefix must not be empty (a budget over every run would be a global cap: use a prefix)")
  .max(MAX_LABEL_LENGTH, `label_prefix must be at most ${MAX_LABEL_LENGTH} characters`);
const vendor = z.enum(VENDORS, { error: `vendor must be one of ${VENDORS.join(", ")}` });

export const createBudgetSchema = z.strictObject({
  name,
  label_prefix: labelPrefix,
  daily_usd_cap: usd("daily_usd_cap"),
  vendor: vendor.optional().nullable(),
});

export const updateBudgetSchema = z
  .strictObject({
    name: name.optional(),
    label_prefix: labelPrefix.optional(),
    daily_usd_cap: usd("daily_usd_cap").optional(),
    vendor: vendor.optional().nullable(),
  })
  .refine((b) => Object.keys(b).length > 0, { message: "send at least one of name, label_prefix, daily_usd_cap, vendor" });

function parse<T extends z.ZodType>(schema: T, input: unknown): z.infer<T> {
  const r = schema.safeParse(input);
  if (!r.success) throw validationError(fieldIssues(r.error.issues));
  return r.data;
}

export interface BudgetSpend {
  spent_today_usd: number;
  reserved_usd: number;
  remaining_today_usd: number;
}

const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());

export function presentBudget(row: BudgetRow, spend: BudgetSpend) {
  return {
    budget_id: row.id,
    name: row.name,
    label_prefix: row.labelPrefix,
    vendor: row.vendor,
    daily_usd_cap: microsToUsd(row.dailyCapMicros),
    status: row.deletedAt === null ? "active" : "deleted",
    created_at: iso(row.createdAt),
    updated_at: iso(row.updatedAt),
    deleted_at: iso(row.deletedAt),
    ...spend,
  };
}

/** Today's row of one budget (zeros before its first call of the day). */
export interface BudgetDay {
  spentMicros: number;
  reservedMicros: number;
}

/** Where budgets live (src/store/sqlite/budgets.ts, src/store/pg/budgets.ts). Every write records its event in its own transaction. */
export interface BudgetStore {
  insert(row: BudgetRow, event: NewEvent, now: number): Promise<void>;
  /**
   * One exact read-modify-write: with the budget row locked against other changes and admissions,
   * `decide` sees the stored row and returns what to set (null: leave it as it is); the change and
   * `event(before, after)` commit together. The row as stored after, or null when there is none.
   */
  modify(id: string, now: number, decide: (before: BudgetRow) => Partial<BudgetRow> | null, event: (before: BudgetRow, after: BudgetRow) => NewEvent): Promise<BudgetRow | null>;
  get(id: string): Promise<BudgetRow | null>;
  /** Newest first. */
  list(includeDeleted: boolean): Promise<BudgetRow[]>;
  day(budgetId: string, day: string): Promise<BudgetDay>;
}

export class BudgetService {
  constructor(private readonly store: BudgetStore) {}

  async create(body: unknown, actor: Actor | null, now = Date.now()): Promise<BudgetRow> {
    const input = parse(createBudgetSchema, body);
    const row: BudgetRow = {
      id: newId("bud", now),
      name: input.name,
      labelPrefix: input.label_prefix,
      vendor: input.vendor ?? null,
      dailyCapMicros: input.daily_usd_cap,
      createdAt: now,
      updatedAt: now,
      deletedAt: null,
    };
    await this.store.insert(row, changeEvent(row, "created", actor, {}), now);
    return row;
  }

  /** Changes a live budget; the next admitted call reads the new values (the ledger never caches budgets). */
  async update(id: string, body: unknown, actor: Actor | null, now = Date.now()): Promise<BudgetRow> {
    const input = parse(updateBudgetSchema, body);
    const after = await this.store.modify(
      id,
      now,
      (before) => {
        if (before.deletedAt !== null) throw new ApiError("conflict", `Budget ${id} was deleted; create a new one.`);
        const set: Partial<BudgetRow> = { updatedAt: now };
        if (input.name !== undefined) set.name = input.name;
        if (input.label_prefix !== undefined) set.labelPrefix = input.label_prefix;
        if (input.daily_usd_cap !== undefined) set.dailyCapMicros = input.daily_usd_cap;
        if (input.vendor !== undefined) set.vendor = input.vendor;
        return set;
      },
      (before, after) => {
        const changes: Record<string, { from: unknown; to: unknown }> = {};
        if (after.name !== before.name) changes.name = { from: before.name, to: after.name };
        if (after.labelPrefix !== before.labelPrefix) changes.label_prefix = { from: before.labelPrefix, to: after.labelPrefix };
        if (after.vendor !== before.vendor) changes.vendor = { from: before.vendor, to: after.vendor };
        if (after.dailyCapMicros !== before.dailyCapMicros) {
          changes.daily_usd_cap = { from: microsToUsd(before.dailyCapMicros), to: microsToUsd(after.dailyCapMicros) };
        }
        return changeEvent(after, "changed", actor, { changes });
      },
    );
    return found(id, after);
  }

  /** Sets deleted_at once (idempotent); the budget stops applying to the next call. */
  async remove(id: string, actor: Actor | null, now = Date.now()): Promise<BudgetRow> {
    const row = await this.store.modify(
      id,
      now,
      (before) => (before.deletedAt !== null ? null : { deletedAt: now, updatedAt: now }),
      (_, deleted) => changeEvent(deleted, "deleted", actor, {}),
    );
    return found(id, row);
  }

  async get(id: string): Promise<BudgetRow> {
    return found(id, await this.store.get(id));
  }

  list(opts: { includeDeleted?: boolean } = {}): Promise<BudgetRow[]> {
    return this.store.list(opts.includeDeleted ?? false);
  }

  async spend(row: BudgetRow, now = Date.now()): Promise<BudgetSpend> {
    const { spentMicros: spent, reservedMicros: reserved } = await this.store.day(row.id, utcDay(now));
    return {
      spent_today_usd: microsToUsd(spent),
      reserved_usd: microsToUsd(reserved),
      remaining_today_usd: microsToUsd(Math.max(0, row.dailyCapMicros - spent - reserved)),
    };
  }
}

function found(id: string, row: BudgetRow | null): BudgetRow {
  if (!row) throw new ApiError("not_found", `No budget ${id}`);
  return row;
}

function changeEvent(row: BudgetRow, action: "created" | "changed" | "deleted", actor: Actor | null, extra: Record<string, unknown>): NewEvent {
  return {
    type: "budget.updated",
    actor,
    target: row.id,
    data: {
      action,
      budget_id: row.id,
      name: row.name,
      label_prefix: row.labelPrefix,
      vendor: row.vendor,
      cap_usd: microsToUsd(row.dailyCapMicros),
      ...extra,
    },
  };
}

/** A budget as the admission step sees it: its cap and today's row. */
export interface LiveBudget {
  id: string;
  name: string;
  label_prefix: string;
  daily_cap_micros: number;
  spent_micros: number;
  reserved_micros: number;
}

/** What a budget can still take today (both ledgers decide with it, as keys with remainingMicros). */
export function budgetLeft(b: LiveBudget): number {
  return Math.max(0, b.daily_cap_micros - b.spent_micros - b.reserved_micros);
}

/** What one call holds on one budget; settlement and release undo exactly these. */
export interface BudgetHold {
  budgetId: string;
  day: string;
  micros: number;
}

/** Today's spend of one budget after a settlement, for cap alerts. */
export interface BudgetSettled {
  budgetId: string;
  name: string;
  labelPrefix: string;
  capMicros: number;
  spentBefore: number;
  spentAfter: number;
}

/**
 * The budget statements of the ledger's hot path. Every method runs inside the ledger's
 * IMMEDIATE transaction, so a budget created, changed or deleted a moment ago applies to the
 * very next call in every process: nothing here is cached.
 */
export class BudgetLedger {
  private readonly q: Record<string, Statement<any, any[]>>;

  constructor(sqlite: Database) {
    const p = (s: string) => sqlite.prepare(s);
    this.q = {
      // substr()/length() count characters on both sides: exactly "starts with", with no LIKE wildcards or case folding.
      // Two statements, not a LEFT JOIN: the join cost ~15 µs per call even with no budgets at all (bun:sqlite,
      // measured), and every proxied call runs this; the day rows are read only for budgets that match.
      matching: p(
        `SELECT b.id, b.name, b.label_prefix, b.daily_cap_micros
           FROM budgets b
          WHERE b.deleted_at IS NULL AND (b.vendor IS NULL OR b.vendor = ?)
            AND substr(?, 1, length(b.label_prefix)) = b.label_prefix
          ORDER BY b.id`,
      ),
      matchingDay: p(`SELECT spent_micros, reserved_micros FROM budget_spend_days WHERE budget_id = ? AND day = ?`),
      reserveDay: p(
        `INSERT INTO budget_spend_days (budget_id, day, reserved_micros) VALUES (?, ?, ?)
         ON CONFLICT (budget_id, day) DO UPDATE SET reserved_micros = reserved_micros + excluded.reserved_micros
         RETURNING spent_micros + reserved_micros AS held`,
      ),
      hold: p(`INSERT INTO budget_reservations (audit_id, budget_id, day, micros) VALUES (?, ?, ?, ?)`),
      holds: p(`SELECT budget_id AS budgetId, day, micros FROM budget_reservations WHERE audit_id = ?`),
      settleDay: p(
        `UPDATE budget_spend_days SET reserved_micros = reserved_micros - ?, spent_micros = spent_micros + ?
          WHERE budget_id = ? AND day = ? RETURNING spent_micros`,
      ),
      budget: p(`SELECT name, label_prefix, daily_cap_micros FROM budgets WHERE id = ?`),
    };
  }

  /** The live budgets over this key's label (and vendor), with today's spend. */
  matching(vendor: string, label: string, day: string): LiveBudget[] {
    const live = this.q.matching!.all(vendor, label) as LiveBudget[];
    for (const b of live) {
      const d = this.q.matchingDay!.get(b.id, day) as { spent_micros: number; reserved_micros: number } | null;
      b.spent_micros = d?.spent_micros ?? 0;
      b.reserved_micros = d?.reserved_micros ?? 0;
    }
    return live;
  }

  /** Reserves `micros` on each budget, for the call whose audit row is `auditId`; asserts the invariant on what it wrote. */
  reserve(auditId: number, live: LiveBudget[], day: string, micros: number): BudgetHold[] {
    return live.map((b) => {
      const { held } = this.q.reserveDay!.get(b.id, day, micros) as { held: number };
      // Checked against the same rows just before in this transaction: a failure here is a ledger bug, and throwing undoes the call's savepoint.
      if (held > b.daily_cap_micros) throw new Error(`ledger invariant broken: budget ${b.id} would hold ${held} > cap ${b.daily_cap_micros}`);
      this.q.hold!.run(auditId, b.id, day, micros);
      return { budgetId: b.id, day, micros };
    });
  }

  /** What an earlier attempt (carried over by a retry) holds. */
  heldBy(auditId: number): BudgetHold[] {
    return this.q.holds!.all(auditId) as BudgetHold[];
  }

  /** Turns each hold into `actual` spent (0 on release); returns the spend before and after, for alerts. */
  settle(holds: BudgetHold[], actual: number): BudgetSettled[] {
    const out: BudgetSettled[] = [];
    for (const h of holds) {
      const row = this.q.settleDay!.get(h.micros, actual, h.budgetId, h.day) as { spent_micros: number } | null;
      if (!row || actual === 0) continue;
      const b = this.q.budget!.get(h.budgetId) as { name: string; label_prefix: string; daily_cap_micros: number };
      out.push({ budgetId: h.budgetId, name: b.name, labelPrefix: b.label_prefix, capMicros: b.daily_cap_micros, spentBefore: row.spent_micros - actual, spentAfter: row.spent_micros });
    }
    return out;
  }
}
