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

/** A stored session: only the SHA-256 of the browser's session id. */
export interface SessionRow {
  idHash: string;
  csrfToken: string;
  createdAt: number;
  expiresAt: number;
  tokenId: string | null;
}

/** Where sessions live (src/store/sqlite/sessions.ts, src/store/pg/sessions.ts). */
export interface SessionStore {
  insert(row: SessionRow): Promise<void>;
  /** The session unless it is unknown, ended or expired at `now`. */
  findLive(idHash: string, now: number): Promise<Pick<SessionRow, "csrfToken" | "expiresAt" | "tokenId"> | null>;
  /** Marks it ended (the row stays); a second call changes nothing. */
  end(idHash: string, now: number): Promise<void>;
}

/**
 * Server-side sessions for the admin pages, opened with a management token.
 * The browser holds a random session id; only its SHA-256 is stored.
 */
export class AdminSessions {
  constructor(
    private readonly store: SessionStore,
    private readonly tokens: TokenStore,
  ) {}

  /**
   * A new session for a valid admin-role management token; null for anything else (the admin
   * pages can do everything, so an issuer or viewer token must not open them).
   */
  async start(managementToken: string, now = Date.now()): Promise<{ sessionId: string; session: AdminSession } | null> {
    const principal = await this.tokens.authenticate(managementToken);
    if (!principal || principal.role !== "admin") return null;
    const sessionId = randomToken(32);
    const session: AdminSession = { csrfToken: randomToken(32), expiresAt: now + ADMIN_SESSION_TTL_MS, principal };
    await this.store.insert({ idHash: sha256Hex(sessionId), csrfToken: session.csrfToken, createdAt: now, expiresAt: session.expiresAt, tokenId: this.tokens.sessionRef(principal) });
    return { sessionId, session };
  }

  /** The live session behind a cookie value, or null when it is unknown, ended or expired. */
  async find(sessionId: string | null | undefined, now = Date.now()): Promise<AdminSession | null> {
    if (!sessionId) return null;
    const row = await this.store.findLive(sha256Hex(sessionId), now);
    if (!row) return null;
    // A revoke also ends the session rows; this check covers a token revoked by an older binary.
    const principal = await this.tokens.principalById(row.tokenId);
    if (!principal || principal.role !== "admin") return null;
    return { csrfToken: row.csrfToken, expiresAt: row.expiresAt, principal };
  }

  /** Logout: the session stops working at once; the row stays, marked ended. */
  async end(sessionId: string | null | undefined, now = Date.now()): Promise<void> {
    if (!sessionId) return;
    await this.store.end(sha256Hex(sessionId), now);
  }
}

/** Constant-time check of the CSRF token a request carried. */
export function csrfMatches(session: AdminSession, sent: string | null | undefined): boolean {
  return typeof sent === "string" && sent.length > 0 && safeEqual(sent, session.csrfToken);
}
