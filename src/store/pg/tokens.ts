import { and, count, desc, eq, getTableColumns, isNull, sql } from "drizzle-orm";
import type { NewEvent } from "../../domain/events.ts";
import type { NewToken, TokenInfo, TokenStorage } from "../../domain/tokens.ts";
import { ADVISORY_LOCK } from "../../db/pg.ts";
import { pgSchema, type PgExec, type PgOrm } from "../backend.ts";
import type { PgEventLog } from "./events.ts";

const { managementTokens, adminSessions } = pgSchema;

// Every column but the hash (TokenInfo), and what authenticate() needs of a live token (LiveToken).
const { tokenHash: _hash, ...info } = getTableColumns(managementTokens);
const { createdAt: _created, revokedAt: _revoked, ...live } = info;

/** Makes first starts take turns across replicas. */
const LOCK_FIRST_TOKEN = sql`SELECT pg_advisory_xact_lock(${ADVISORY_LOCK.firstToken})`;

/** Management tokens in PostgreSQL: a token minted or revoked on one replica is seen by the next request on every other. */
export class PgTokenStore implements TokenStorage {
  constructor(
    private readonly orm: PgOrm,
    private readonly events: PgEventLog,
  ) {}

  async insert(token: NewToken, event: NewEvent): Promise<void> {
    await this.orm.transaction((tx) => this.write(tx, token, event));
  }

  async insertIfNone(token: NewToken, event: NewEvent): Promise<boolean> {
    return this.orm.transaction(async (tx) => {
      // Exact across replicas: the lock makes first starts take turns, and under READ COMMITTED the
      // count after it sees every token committed by the replica that went first.
      await tx.execute(LOCK_FIRST_TOKEN);
      const [row] = await tx.select({ n: count() }).from(managementTokens).where(isNull(managementTokens.revokedAt));
      if (row!.n > 0) return false;
      await this.write(tx, token, event);
      return true;
    });
  }

  private async write(tx: PgExec, token: NewToken, event: NewEvent): Promise<void> {
    await tx.insert(managementTokens).values(token);
    await this.events.record(tx, event, token.createdAt);
  }

  list(): Promise<TokenInfo[]> {
    return this.orm.select(info).from(managementTokens).orderBy(desc(managementTokens.id));
  }

  get(id: string): Promise<TokenInfo | null> {
    return this.find(this.orm, id);
  }

  private async find(db: PgExec, id: string): Promise<TokenInfo | null> {
    const [row] = await db.select(info).from(managementTokens).where(eq(managementTokens.id, id)).limit(1);
    return row ?? null;
  }

  revoke(id: string, now: number, describe: (t: TokenInfo, sessionsEnded: number) => NewEvent): Promise<TokenInfo | null> {
    return this.orm.transaction(async (tx) => {
      // One conditional UPDATE: of two replicas revoking together, exactly one gets the row back and records the event.
      const [revoked] = await tx.update(managementTokens).set({ revokedAt: now }).where(and(eq(managementTokens.id, id), isNull(managementTokens.revokedAt))).returning(info);
      if (!revoked) return this.find(tx, id);
      const ended = await tx.update(adminSessions).set({ endedAt: now }).where(and(eq(adminSessions.tokenId, id), isNull(adminSessions.endedAt))).returning({ idHash: adminSessions.idHash });
      await this.events.record(tx, describe(revoked, ended.length), now);
      return revoked;
    });
  }

  async countLive(): Promise<number> {
    const [row] = await this.orm.select({ n: count() }).from(managementTokens).where(isNull(managementTokens.revokedAt));
    return row!.n;
  }

  // One SELECT on the token_hash unique index, no cache: a revoke on any replica refuses the next request here.
  async liveByHash(tokenHash: string) {
    const [row] = await this.orm.select(live).from(managementTokens).where(and(eq(managementTokens.tokenHash, tokenHash), isNull(managementTokens.revokedAt))).limit(1);
    return row ?? null;
  }

  async liveById(id: string) {
    const [row] = await this.orm.select(live).from(managementTokens).where(and(eq(managementTokens.id, id), isNull(managementTokens.revokedAt))).limit(1);
    return row ?? null;
  }
}
