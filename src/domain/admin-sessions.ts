import { and, eq, gt, isNull } from "drizzle-orm";
import type { Db } from "../db/connection.ts";
import { adminSessions } from "../db/schema.ts";
import { randomToken, safeEqual, sha256Hex } from "./crypto.ts";
import type { Principal, TokenStore } from "./tokens.ts";

/** Sessions end 12 h after login, however active: a lost laptop is not an admin forever. */
export const ADMIN_SESSION_TTL_MS = 12 * 3_600_000;

export interface AdminSession {
  /** Sent back on every state-changing request; a page from another site cannot read it. */
  csrfToken: string;
  expiresAt: number;
  /** The token the session was opened with, re-read on every request: revoked, and the session is over. */
  principal: Principal;
}

/**
 * Server-side sessions for the admin pages, opened with a management token.
 * The browser holds a random session id; only its SHA-256 is stored.
 */
export class AdminSessions {
  constructor(
    private readonly db: Db,
    private readonly tokens: TokenStore,
  ) {}

  /**
   * A new session for a valid admin-role management token; null for anything else (the admin
   * pages can do everything, so an issuer or viewer token must not open them).
   */
  start(managementToken: string, now = Date.now()): { sessionId: string; session: AdminSession } | null {
    const principal = this.tokens.authenticate(managementToken);
    if (!principal || principal.role !== "admin") return null;
    const sessionId = randomToken(32);
    const session: AdminSession = { csrfToken: randomToken(32), expiresAt: now + ADMIN_SESSION_TTL_MS, principal };
    this.db.orm
      .insert(adminSessions)
      .values({ idHash: sha256Hex(sessionId), csrfToken: session.csrfToken, createdAt: now, expiresAt: session.expiresAt, tokenId: this.tokens.sessionRef(principal) })
      .run();
    return { sessionId, session };
  }

  /** The live session behind a cookie value, or null when it is unknown, ended or expired. */
  find(sessionId: string | null | undefined, now = Date.now()): AdminSession | null {
    if (!sessionId) return null;
    const row = this.db.orm
      .select({ csrfToken: adminSessions.csrfToken, expiresAt: adminSessions.expiresAt, tokenId: adminSessions.tokenId })
      .from(adminSessions)
      .where(and(eq(adminSessions.idHash, sha256Hex(sessionId)), isNull(adminSessions.endedAt), gt(adminSessions.expiresAt, now)))
      .get();
    if (!row) return null;
    // A revoke also ends the session rows; this check covers a token revoked by an older binary.
    const principal = this.tokens.principalById(row.tokenId);
    if (!principal || principal.role !== "admin") return null;
    return { csrfToken: row.csrfToken, expiresAt: row.expiresAt, principal };
  }

  /** Logout: the session stops working at once; the row stays, marked ended. */
  end(sessionId: string | null | undefined, now = Date.now()): void {
    if (!sessionId) return;
    this.db.orm
      .update(adminSessions)
      .set({ endedAt: now })
      .where(and(eq(adminSessions.idHash, sha256Hex(sessionId)), isNull(adminSessions.endedAt)))
      .run();
  }
}

/** Constant-time check of the CSRF token a request carried. */
export function csrfMatches(session: AdminSession, sent: string | null | undefined): boolean {
  return typeof sent === "string" && sent.length > 0 && safeEqual(sent, session.csrfToken);
}
