import type { Database } from "bun:sqlite";
import { randomToken, safeEqual, sha256Hex } from "./crypto.ts";

/** Management API tokens: "kbt_" + 32 random bytes; only the SHA-256 is stored. */
export const MANAGEMENT_TOKEN_PREFIX = "kbt_";

/** What a management token may do (SPEC §7). Tokens minted before roles existed are admins. */
export type Role = "admin" | "issuer" | "viewer";

/** The caller behind a management request: a stored token, or the bootstrap KEYBRAKE_ADMIN_TOKEN. */
export interface Principal {
  tokenId: string;
  name: string;
  role: Role;
  /** An issuer's policy (SPEC §7); null for admins and viewers. */
  policy: unknown | null;
}

export const BOOTSTRAP_PRINCIPAL: Principal = { tokenId: "bootstrap", name: "KEYBRAKE_ADMIN_TOKEN", role: "admin", policy: null };

export class TokenStore {
  private readonly findByHash;
  constructor(
    private readonly sqlite: Database,
    private readonly bootstrapToken?: string,
  ) {
    this.findByHash = sqlite.query<{ id: string; name: string }, [string]>(
      "SELECT id, name FROM management_tokens WHERE token_hash = ? AND revoked_at IS NULL",
    );
  }

  create(name: string): { id: string; token: string } {
    const token = MANAGEMENT_TOKEN_PREFIX + randomToken(32);
    const id = "tok_" + randomToken(12);
    this.sqlite
      .query("INSERT INTO management_tokens (id, name, token_hash, created_at) VALUES (?, ?, ?, ?)")
      .run(id, name, sha256Hex(token), Date.now());
    return { id, token };
  }

  count(): number {
    return this.sqlite.query<{ n: number }, []>("SELECT count(*) AS n FROM management_tokens WHERE revoked_at IS NULL").get()!.n;
  }

  /** Mints the first token when there is neither a stored one nor a bootstrap token; returns it so it can be printed once. */
  ensureFirstToken(): string | null {
    if (this.bootstrapToken) return null;
    return this.sqlite
      .transaction(() => (this.count() === 0 ? this.create("first-start").token : null))
      .immediate();
  }

  /** The principal a token stands for, or null for an unknown or revoked token. */
  authenticate(token: string | null | undefined): Principal | null {
    if (!token) return null;
    if (this.bootstrapToken && safeEqual(token, this.bootstrapToken)) return BOOTSTRAP_PRINCIPAL;
    const row = this.findByHash.get(sha256Hex(token)) as { id: string; name: string } | null;
    return row ? { tokenId: row.id, name: row.name, role: "admin", policy: null } : null;
  }

  verify(token: string | null | undefined): boolean {
    if (!token) return false;
    if (this.bootstrapToken && safeEqual(token, this.bootstrapToken)) return true;
    return this.findByHash.get(sha256Hex(token)) !== null;
  }
}
