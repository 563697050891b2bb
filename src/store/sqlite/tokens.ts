import { and, count, desc, eq, getTableColumns, isNull, sql } from "drizzle-orm";
import type { Db } from "../../db/connection.ts";
import { adminSessions, managementTokens } from "../../db/schema.ts";
import type { EventLog, NewEvent } from "../../domain/events.ts";
import type { NewToken, TokenInfo, TokenStorage } from "../../domain/tokens.ts";

// Every column but the hash (TokenInfo), and what authenticate() needs of a live token (LiveToken).
const { tokenHash: _hash, ...info } = getTableColumns(managementTokens);
const { createdAt: _created, revokedAt: _revoked, ...live } = info;

/** Management tokens in the SQLite file; each write is one BEGIN IMMEDIATE transaction with its event. */
export class SqliteTokenStore implements TokenStorage {
  private readonly byHash;
  private readonly byId;

  constructor(
    private readonly db: Db,
    private readonly events: EventLog,
  ) {
    // Prepared once: authenticate runs on every management request.
    this.byHash = db.orm.select(live).from(managementTokens).where(and(eq(managementTokens.tokenHash, sql.placeholder("hash")), isNull(managementTokens.revokedAt))).prepare();
    this.byId = db.orm.select(live).from(managementTokens).where(and(eq(managementTokens.id, sql.placeholder("id")), isNull(managementTokens.revokedAt))).prepare();
  }

  async insert(token: NewToken, event: NewEvent): Promise<void> {
    this.db.sqlite.transaction(() => this.write(token, event)).immediate();
  }

  async insertIfNone(token: NewToken, event: NewEvent): Promise<boolean> {
    // IMMEDIATE takes the write lock before counting: of two processes starting together, the second sees the first's token.
    return this.db.sqlite
      .transaction(() => {
        if (this.count() > 0) return false;
        this.write(token, event);
        return true;
      })
      .immediate();
  }

  private write(token: NewToken, event: NewEvent): void {
    this.db.orm.insert(managementTokens).values(token).run();
    this.events.record(event, token.createdAt);
  }

  async list(): Promise<TokenInfo[]> {
    return this.db.orm.select(info).from(managementTokens).orderBy(desc(managementTokens.id)).all();
  }

  async get(id: string): Promise<TokenInfo | null> {
    return this.find(id);
  }

  private find(id: string): TokenInfo | null {
    return this.db.orm.select(info).from(managementTokens).where(eq(managementTokens.id, id)).get() ?? null;
  }

  async revoke(id: string, now: number, describe: (t: TokenInfo, sessionsEnded: number) => NewEvent): Promise<TokenInfo | null> {
    return this.db.sqlite
      .transaction(() => {
        const revoked = this.db.orm.update(managementTokens).set({ revokedAt: now }).where(and(eq(managementTokens.id, id), isNull(managementTokens.revokedAt))).returning(info).get();
        if (!revoked) return this.find(id);
        const sessions = this.db.orm.update(adminSessions).set({ endedAt: now }).where(and(eq(adminSessions.tokenId, id), isNull(adminSessions.endedAt))).returning({ idHash: adminSessions.idHash }).all();
        this.events.record(describe(revoked, sessions.length), now);
        return revoked;
      })
      .immediate();
  }

  async countLive(): Promise<number> {
    return this.count();
  }

  private count(): number {
    return this.db.orm.select({ n: count() }).from(managementTokens).where(isNull(managementTokens.revokedAt)).get()!.n;
  }

  async liveByHash(tokenHash: string) {
    return this.byHash.get({ hash: tokenHash }) ?? null;
  }

  async liveById(id: string) {
    return this.byId.get({ id }) ?? null;
  }
}
