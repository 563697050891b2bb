import { and, desc, eq, isNull } from "drizzle-orm";
import type { Db } from "../../db/connection.ts";
import { keySpendDays, vaultKeys, type VaultKeyRow } from "../../db/schema.ts";
import type { EventLog, NewEvent } from "../../domain/events.ts";
import type { KeyChange, KeyFilter, KeyListFilter, KeySelector, KeyStatus, KeyStore } from "../../domain/keys.ts";
import { keyConditions, keyDayRow, keySpendWithTotals, selected, statusCounts } from "../key-queries.ts";

/**
 * Vault keys in the SQLite file. Every write is one IMMEDIATE transaction: it holds the file's
 * write lock from its first read, so what a change decides on cannot move under it (the ledger's
 * admissions take the same lock).
 */
export class SqliteKeyStore implements KeyStore {
  constructor(
    private readonly db: Db,
    private readonly events: EventLog,
  ) {}

  async insert(row: VaultKeyRow, event: NewEvent, now: number): Promise<void> {
    this.db.sqlite
      .transaction(() => {
        this.db.orm.insert(vaultKeys).values(row).run();
        this.events.record(event, now);
      })
      .immediate();
  }

  async get(keyId: string, issuedBy?: string): Promise<VaultKeyRow | null> {
    return this.db.orm.select().from(vaultKeys).where(selected(vaultKeys, { keyId, issuedBy })).get() ?? null;
  }

  async change(which: KeySelector, change: (row: VaultKeyRow) => KeyChange | null, now: number): Promise<VaultKeyRow[]> {
    return this.db.sqlite
      .transaction(() =>
        this.db.orm
          .select()
          .from(vaultKeys)
          .where(selected(vaultKeys, which))
          .orderBy(desc(vaultKeys.id))
          .all()
          .map((row) => {
            const c = change(row);
            if (!c) return row;
            this.db.orm.update(vaultKeys).set(c.set).where(eq(vaultKeys.id, row.id)).run();
            this.events.record(c.event, now);
            return { ...row, ...c.set };
          }),
      )
      .immediate();
  }

  async revokeRun(label: string, issuedBy: string | undefined, event: (revokedIds: string[]) => NewEvent, now: number) {
    return this.db.sqlite
      .transaction(() => {
        const own = issuedBy === undefined ? undefined : eq(vaultKeys.issuedByTokenId, issuedBy);
        const revokedIds = this.db.orm
          .update(vaultKeys)
          .set({ revokedAt: now })
          .where(and(eq(vaultKeys.agentRunLabel, label), isNull(vaultKeys.revokedAt), own))
          .returning({ id: vaultKeys.id })
          .all()
          .map((r) => r.id)
          .sort()
          .reverse();
        if (revokedIds.length > 0) this.events.record(event(revokedIds), now);
        const rows = this.db.orm.select().from(vaultKeys).where(and(eq(vaultKeys.agentRunLabel, label), own)).orderBy(desc(vaultKeys.id)).all();
        return { rows, revokedIds };
      })
      .immediate();
  }

  async list(f: KeyListFilter & { issuedBy?: string }, now: number): Promise<VaultKeyRow[]> {
    return this.db.orm
      .select()
      .from(vaultKeys)
      .where(and(...keyConditions(vaultKeys, f, now)))
      .orderBy(desc(vaultKeys.id))
      .limit(f.limit)
      .all();
  }

  async countByStatus(f: Pick<KeyFilter, "label" | "vendor">, now: number): Promise<Record<KeyStatus, number>> {
    return this.db.orm.select(statusCounts(vaultKeys, now)).from(vaultKeys).where(and(...keyConditions(vaultKeys, f, now))).get()!;
  }

  async spendOn(keyId: string, day: string) {
    const row = this.db.orm
      .select(keySpendWithTotals(vaultKeys, keySpendDays))
      .from(vaultKeys)
      .leftJoin(keySpendDays, keyDayRow(vaultKeys, keySpendDays, day))
      .where(eq(vaultKeys.id, keyId))
      .get();
    return row ?? null;
  }
}
