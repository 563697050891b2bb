import { and, eq, gt, isNull } from "drizzle-orm";
import type { Db } from "../../db/connection.ts";
import { adminSessions } from "../../db/schema.ts";
import type { SessionRow, SessionStore } from "../../domain/admin-sessions.ts";

/** Admin sessions in the SQLite file. */
export class SqliteSessionStore implements SessionStore {
  constructor(private readonly db: Db) {}

  async insert(row: SessionRow): Promise<void> {
    this.db.orm.insert(adminSessions).values(row).run();
  }

  async findLive(idHash: string, now: number) {
    const row = this.db.orm
      .select({ csrfToken: adminSessions.csrfToken, expiresAt: adminSessions.expiresAt, tokenId: adminSessions.tokenId })
      .from(adminSessions)
      .where(and(eq(adminSessions.idHash, idHash), isNull(adminSessions.endedAt), gt(adminSessions.expiresAt, now)))
      .get();
    return row ?? null;
  }

  async end(idHash: string, now: number): Promise<void> {
    this.db.orm.update(adminSessions).set({ endedAt: now }).where(and(eq(adminSessions.idHash, idHash), isNull(adminSessions.endedAt))).run();
  }
}
