import { and, desc, eq, inArray, isNull } from "drizzle-orm";
import type { VaultKeyRow } from "../../db/schema.ts";
import type { NewEvent } from "../../domain/events.ts";
import type { KeyChange, KeyFilter, KeyListFilter, KeySelector, KeyStatus, KeyStore } from "../../domain/keys.ts";
import { pgSchema, type PgOrm } from "../backend.ts";
import { keyConditions, keyDayRow, keySpendWithTotals, selected, statusCounts } from "../key-queries.ts";
import type { PgEventLog } from "./events.ts";

const { keySpendDays, vaultKeys } = pgSchema;

/**
 * Vault keys in PostgreSQL, shared by replicas. Every change locks the key rows it decides on
 * (`FOR UPDATE`, in id order so two changes of one run never deadlock): the same row lock that
 * admission takes in src/ledger/pg.ts, so a PATCH or revoke and a call, on any replicas, queue on
 * it and each sees the other's committed row.
 */
export class PgKeyStore implements KeyStore {
  constructor(
    private readonly orm: PgOrm,
    private readonly events: PgEventLog,
  ) {}

  async insert(row: VaultKeyRow, event: NewEvent, now: number): Promise<void> {
    await this.orm.transaction(async (tx) => {
      await tx.insert(vaultKeys).values(row);
      await this.events.record(tx, event, now);
    });
  }

  async get(keyId: string, issuedBy?: string): Promise<VaultKeyRow | null> {
    const [row] = await this.orm.select().from(vaultKeys).where(selected(vaultKeys, { keyId, issuedBy })).limit(1);
    return row ?? null;
  }

  async change(which: KeySelector, change: (row: VaultKeyRow) => KeyChange | null, now: number): Promise<VaultKeyRow[]> {
    return this.orm.transaction(async (tx) => {
      // Exact: FOR UPDATE waits for a concurrent change or admission and then returns the newest
      // committed row (re-checking the WHERE), so `change` decides on what it overwrites.
      const rows = await tx.select().from(vaultKeys).where(selected(vaultKeys, which)).orderBy(desc(vaultKeys.id)).for("update");
      const after: VaultKeyRow[] = [];
      for (const row of rows) {
        const c = change(row);
        if (c) {
          await tx.update(vaultKeys).set(c.set).where(eq(vaultKeys.id, row.id));
          await this.events.record(tx, c.event, now);
        }
        after.push(c ? { ...row, ...c.set } : row);
      }
      return after;
    });
  }

  async revokeRun(label: string, issuedBy: string | undefined, event: (revokedIds: string[]) => NewEvent, now: number) {
    return this.orm.transaction(async (tx) => {
      const own = issuedBy === undefined ? undefined : eq(vaultKeys.issuedByTokenId, issuedBy);
      // Exact and once: the unrevoked keys are locked (in id order, as change() locks them), so a
      // concurrent revoke waits and then finds them revoked.
      const locked = await tx
        .select({ id: vaultKeys.id })
        .from(vaultKeys)
        .where(and(eq(vaultKeys.agentRunLabel, label), isNull(vaultKeys.revokedAt), own))
        .orderBy(desc(vaultKeys.id))
        .for("update");
      const revokedIds = locked.map((r) => r.id);
      if (revokedIds.length > 0) {
        await tx.update(vaultKeys).set({ revokedAt: now }).where(inArray(vaultKeys.id, revokedIds));
        await this.events.record(tx, event(revokedIds), now);
      }
      const rows = await tx.select().from(vaultKeys).where(and(eq(vaultKeys.agentRunLabel, label), own)).orderBy(desc(vaultKeys.id));
      return { rows, revokedIds };
    });
  }

  async list(f: KeyListFilter & { issuedBy?: string }, now: number): Promise<VaultKeyRow[]> {
    return this.orm
      .select()
      .from(vaultKeys)
      .where(and(...keyConditions(vaultKeys, f, now)))
      .orderBy(desc(vaultKeys.id))
      .limit(f.limit);
  }

  async countByStatus(f: Pick<KeyFilter, "label" | "vendor">, now: number): Promise<Record<KeyStatus, number>> {
    const [counts] = await this.orm.select(statusCounts(vaultKeys, now)).from(vaultKeys).where(and(...keyConditions(vaultKeys, f, now)));
    return counts!;
  }

  async spendOn(keyId: string, day: string) {
    const [row] = await this.orm
      .select(keySpendWithTotals(vaultKeys, keySpendDays))
      .from(vaultKeys)
      .leftJoin(keySpendDays, keyDayRow(vaultKeys, keySpendDays, day))
      .where(eq(vaultKeys.id, keyId))
      .limit(1);
    return row ?? null;
  }
}
