import { and, desc, eq, isNull } from "drizzle-orm";
import type { BudgetRow } from "../../db/schema.ts";
import type { BudgetDay, BudgetStore } from "../../domain/budgets.ts";
import type { NewEvent } from "../../domain/events.ts";
import { pgSchema, type PgOrm } from "../backend.ts";
import type { PgEventLog } from "./events.ts";

const { budgets, budgetSpendDays } = pgSchema;

/** Budgets in PostgreSQL, shared by every replica's ledger (src/ledger/pg.ts reads them in each admission). */
export class PgBudgetStore implements BudgetStore {
  constructor(
    private readonly orm: PgOrm,
    private readonly events: PgEventLog,
  ) {}

  async insert(row: BudgetRow, event: NewEvent, now: number): Promise<void> {
    await this.orm.transaction(async (tx) => {
      await tx.insert(budgets).values(row);
      await this.events.record(tx, event, now);
    });
  }

  async modify(id: string, now: number, decide: (before: BudgetRow) => Partial<BudgetRow> | null, event: (before: BudgetRow, after: BudgetRow) => NewEvent) {
    return this.orm.transaction(async (tx) => {
      // FOR UPDATE: exact against a concurrent PATCH or DELETE, and ordered with admissions, which hold the budget row FOR SHARE until they commit.
      const [before] = await tx.select().from(budgets).where(eq(budgets.id, id)).for("update");
      if (!before) return null;
      const set = decide(before);
      if (!set) return before;
      const [after] = await tx.update(budgets).set(set).where(eq(budgets.id, id)).returning();
      await this.events.record(tx, event(before, after!), now);
      return after!;
    });
  }

  async get(id: string): Promise<BudgetRow | null> {
    const [row] = await this.orm.select().from(budgets).where(eq(budgets.id, id));
    return row ?? null;
  }

  list(includeDeleted: boolean): Promise<BudgetRow[]> {
    return this.orm
      .select()
      .from(budgets)
      .where(includeDeleted ? undefined : isNull(budgets.deletedAt))
      .orderBy(desc(budgets.id));
  }

  async day(budgetId: string, day: string): Promise<BudgetDay> {
    const [row] = await this.orm
      .select({ spentMicros: budgetSpendDays.spentMicros, reservedMicros: budgetSpendDays.reservedMicros })
      .from(budgetSpendDays)
      .where(and(eq(budgetSpendDays.budgetId, budgetId), eq(budgetSpendDays.day, day)));
    return row ?? { spentMicros: 0, reservedMicros: 0 };
  }
}
