import { and, desc, eq, isNull } from "drizzle-orm";
import type { Db } from "../../db/connection.ts";
import { budgets, budgetSpendDays, type BudgetRow } from "../../db/schema.ts";
import type { BudgetDay, BudgetStore } from "../../domain/budgets.ts";
import type { EventLog, NewEvent } from "../../domain/events.ts";

/** Budgets in the SQLite file. A write holds the file's write lock (BEGIN IMMEDIATE), as the ledger's admission does: the two are ordered. */
export class SqliteBudgetStore implements BudgetStore {
  constructor(
    private readonly db: Db,
    private readonly events: EventLog,
  ) {}

  async insert(row: BudgetRow, event: NewEvent, now: number): Promise<void> {
    this.db.sqlite
      .transaction(() => {
        this.db.orm.insert(budgets).values(row).run();
        this.events.record(event, now);
      })
      .immediate();
  }

  async modify(id: string, now: number, decide: (before: BudgetRow) => Partial<BudgetRow> | null, event: (before: BudgetRow, after: BudgetRow) => NewEvent) {
    return this.db.sqlite
      .transaction(() => {
        const before = this.db.orm.select().from(budgets).where(eq(budgets.id, id)).get();
        if (!before) return null;
        const set = decide(before);
        if (!set) return before;
        const after = this.db.orm.update(budgets).set(set).where(eq(budgets.id, id)).returning().get()!;
        this.events.record(event(before, after), now);
        return after;
      })
      .immediate();
  }

  async get(id: string): Promise<BudgetRow | null> {
    return this.db.orm.select().from(budgets).where(eq(budgets.id, id)).get() ?? null;
  }

  async list(includeDeleted: boolean): Promise<BudgetRow[]> {
    return this.db.orm
      .select()
      .from(budgets)
      .where(includeDeleted ? undefined : isNull(budgets.deletedAt))
      .orderBy(desc(budgets.id))
      .all();
  }

  async day(budgetId: string, day: string): Promise<BudgetDay> {
    const row = this.db.orm
      .select({ spentMicros: budgetSpendDays.spentMicros, reservedMicros: budgetSpendDays.reservedMicros })
      .from(budgetSpendDays)
      .where(and(eq(budgetSpendDays.budgetId, budgetId), eq(budgetSpendDays.day, day)))
      .get();
    return row ?? { spentMicros: 0, reservedMicros: 0 };
  }
}
