import type { Database } from "bun:sqlite";
import { randomToken, safeEqual, sha256Hex } from "./crypto.ts";

/** Management API tokens: "kbt_" + 32 random bytes; only the SHA-256 is stored. */
export const MANAGEMENT_TOKEN_PREFIX = "kbt_";

export class TokenStore {
  private readonly findByHash;
  constructor(
    private readonly sqlite: Database,
    private readonly bootstrapToken?: string,
  ) {
    this.findByHash = sqlite.query<{ id: string }, [string]>(
      "SELECT id FROM management_tokens WHERE token_hash = ? AND revoked_at IS NULL",
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

  verify(token: string | null | undefined): boolean {
    if (!token) return false;
    if (this.bootstrapToken && safeEqual(token, this.bootstrapToken)) return true;
    return this.findByHash.get(sha256Hex(token)) !== null;
  }
}
