import { and, eq, gt, isNull } from "drizzle-orm";
import type { SessionRow, SessionStore } from "../../domain/admin-sessions.ts";
import { pgSchema, type PgOrm } from "../backend.ts";

const { adminSessions } = pgSchema;

/** Admin sessions in PostgreSQL: a login on one replica is valid on every other, and so is a logout. */
export class PgSessionStore implements SessionStore {
  constructor(private readonly orm: PgOrm) {}

  async insert(row: SessionRow): Promise<void> {
    await this.orm.insert(adminSessions).values(row);
  }

  async findLive(idHash: string, now: number) {
    const [row] = await this.orm
      .select({ csrfToken: adminSessions.csrfToken, expiresAt: adminSessions.expiresAt, tokenId: adminSessions.tokenId })
      .from(adminSessions)
      .where(and(eq(adminSessions.idHash, idHash), isNull(adminSessions.endedAt), gt(adminSessions.expiresAt, now)))
      .limit(1);
    return row ?? null;
  }

  async end(idHash: string, now: number): Promise<void> {
    await this.orm.update(adminSessions).set({ endedAt: now }).where(and(eq(adminSessions.idHash, idHash), isNull(adminSessions.endedAt)));
  }
}
