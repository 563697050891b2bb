import type { Database } from "bun:sqlite";
import { z } from "zod";
import { ApiError, fieldIssues, validationError } from "../errors.ts";
import { newId } from "../ids.ts";
import { randomToken, safeEqual, sha256Hex } from "./crypto.ts";
import type { Actor, EventLog } from "./events.ts";
import { parsePolicy, type PolicyInput } from "./policy.ts";

/** Management API tokens: "kbt_" + 32 random bytes; only the SHA-256 is stored. */
export const MANAGEMENT_TOKEN_PREFIX = "kbt_";

export const ROLES = ["admin", "issuer", "viewer"] as const;
/** What a management token may do (SPEC §7). Tokens minted before roles existed are admins. */
export type Role = (typeof ROLES)[number];

/** The caller behind a management request: a stored token, or the bootstrap KEYBRAKE_ADMIN_TOKEN. */
export interface Principal {
  tokenId: string;
  name: string;
  role: Role;
  /** An issuer's policy (SPEC §7) as stored (see domain/policy.ts); null for admins and viewers. */
  policy: unknown | null;
}

export const BOOTSTRAP_TOKEN_ID = "bootstrap";
export const BOOTSTRAP_PRINCIPAL: Principal = { tokenId: BOOTSTRAP_TOKEN_ID, name: "KEYBRAKE_ADMIN_TOKEN", role: "admin", policy: null };

/** Who to name in the event trail for a principal. */
export const actorOf = (p: Principal): Actor => ({ tokenId: p.tokenId, name: p.name });

/** A stored token as GET /tokens shows it: never the token or its hash. */
export interface TokenInfo {
  id: string;
  name: string;
  role: Role;
  policy: Record<string, unknown> | null;
  createdAt: number;
  revokedAt: number | null;
}

interface TokenRow {
  id: string;
  name: string;
  role: Role;
  policy: string | null;
  created_at: number;
  revoked_at: number | null;
}

export const CreateTokenBody = z.strictObject({
  name: z
    .string({ error: "name must be a string" })
    .trim()
    .min(1, "name must not be empty")
    .max(100, "name must be at most 100 characters")
    .refine((n) => !/[\u0000-\u001f\u007f]/.test(n), "name must not contain control characters"),
  role: z.enum(ROLES, { error: `role must be one of ${ROLES.join(", ")}` }).default("admin"),
  policy: z.unknown().optional(),
});

const presentRow = (r: TokenRow): TokenInfo => ({
  id: r.id,
  name: r.name,
  role: r.role,
  policy: r.policy === null ? null : JSON.parse(r.policy),
  createdAt: r.created_at,
  revokedAt: r.revoked_at,
});

export function presentToken(t: TokenInfo) {
  return {
    token_id: t.id,
    name: t.name,
    role: t.role,
    policy: t.policy,
    status: t.revokedAt === null ? "active" : "revoked",
    created_at: new Date(t.createdAt).toISOString(),
    revoked_at: t.revokedAt === null ? null : new Date(t.revokedAt).toISOString(),
  };
}

/**
 * Management tokens. `authenticate` reads the database on every request (one indexed lookup):
 * nothing is cached, so a revoke is seen by the next request of every process on the data dir.
 */
export class TokenStore {
  private readonly findByHash;
  constructor(
    private readonly sqlite: Database,
    private readonly bootstrapToken?: string,
    private readonly events?: EventLog,
    /** KEYBRAKE_MAX_KEY_TTL: a policy's max_expires_in cannot exceed it. */
    private readonly maxTtlMs = Number.MAX_SAFE_INTEGER,
  ) {
    this.findByHash = sqlite.query<{ id: string; name: string; role: Role; policy: string | null }, [string]>(
      "SELECT id, name, role, policy FROM management_tokens WHERE token_hash = ? AND revoked_at IS NULL",
    );
  }

  /**
   * Validates a POST /tokens body (400 naming each bad field) and mints the token; `token` is
   * returned only here. An issuer needs a policy; admins and viewers take none.
   */
  createFromBody(body: unknown, actor: Actor | null, now = Date.now()): { info: TokenInfo; token: string } {
    const r = CreateTokenBody.safeParse(body);
    if (!r.success) throw validationError(fieldIssues(r.error.issues));
    const { name, role, policy } = r.data;
    if (role === "issuer" && policy === undefined) {
      throw validationError([{ field: "policy", message: "an issuer token needs a policy (at least max_daily_usd_cap)" }]);
    }
    if (role !== "issuer" && policy !== undefined && policy !== null) {
      throw validationError([{ field: "policy", message: `a policy applies only to issuer tokens, not ${role}` }]);
    }
    if (role === "issuer") parsePolicy(policy, this.maxTtlMs);
    return this.create(name, actor, { role, policy: role === "issuer" ? (policy as PolicyInput) : null, now });
  }

  create(
    name: string,
    actor: Actor | null = null,
    opts: { role?: Role; policy?: PolicyInput | null; now?: number } = {},
  ): { id: string; token: string; info: TokenInfo } {
    const now = opts.now ?? Date.now();
    const role = opts.role ?? "admin";
    const token = MANAGEMENT_TOKEN_PREFIX + randomToken(32);
    const id = newId("tok", now);
    const policy = opts.policy ? JSON.stringify(opts.policy) : null;
    this.sqlite
      .transaction(() => {
        this.sqlite
          .query("INSERT INTO management_tokens (id, name, token_hash, created_at, role, policy) VALUES (?, ?, ?, ?, ?, ?)")
          .run(id, name, sha256Hex(token), now, role, policy);
        this.events?.record({ type: "token.created", actor, target: id, data: { token_id: id, name, role } }, now);
      })
      .immediate();
    const info: TokenInfo = { id, name, role, policy: opts.policy ? JSON.parse(policy!) : null, createdAt: now, revokedAt: null };
    return { id, token, info };
  }

  /** Newest first, revoked ones included (marked). */
  list(): TokenInfo[] {
    return (this.sqlite.query("SELECT id, name, role, policy, created_at, revoked_at FROM management_tokens ORDER BY id DESC").all() as TokenRow[]).map(presentRow);
  }

  get(id: string): TokenInfo {
    const row = this.sqlite.query("SELECT id, name, role, policy, created_at, revoked_at FROM management_tokens WHERE id = ?").get(id) as TokenRow | null;
    if (!row) {
      const hint = id === BOOTSTRAP_TOKEN_ID ? " (KEYBRAKE_ADMIN_TOKEN is retired by unsetting it and restarting)" : "";
      throw new ApiError("not_found", `No management token ${id}${hint}`);
    }
    return presentRow(row);
  }

  /**
   * Revokes at once and ends every admin session opened with the token, in one transaction with
   * its event. Idempotent: a second call returns the same revocation and records nothing.
   */
  revoke(id: string, actor: Actor | null, now = Date.now()): TokenInfo {
    return this.sqlite
      .transaction(() => {
        const changed = this.sqlite.query("UPDATE management_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL").run(now, id).changes;
        if (changed > 0) {
          const sessions = this.sqlite.query("UPDATE admin_sessions SET ended_at = ? WHERE token_id = ? AND ended_at IS NULL").run(now, id).changes;
          const info = this.get(id);
          this.events?.record({ type: "token.revoked", actor, target: id, data: { token_id: id, name: info.name, role: info.role, sessions_ended: sessions } }, now);
        }
        return this.get(id);
      })
      .immediate();
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
    const row = this.findByHash.get(sha256Hex(token));
    if (!row) return null;
    return { tokenId: row.id, name: row.name, role: row.role, policy: row.policy === null ? null : JSON.parse(row.policy) };
  }

  /**
   * What an admin session stores to name its token: the token id, or for the bootstrap token
   * "bootstrap:" + its SHA-256, so changing KEYBRAKE_ADMIN_TOKEN ends the sessions opened with the old one.
   */
  sessionRef(p: Principal): string {
    return p.tokenId === BOOTSTRAP_TOKEN_ID && this.bootstrapToken ? `${BOOTSTRAP_TOKEN_ID}:${sha256Hex(this.bootstrapToken)}` : p.tokenId;
  }

  /** The principal behind a session's token reference (see sessionRef); null once revoked or changed. */
  principalById(id: string | null): Principal | null {
    if (!id) return null;
    if (id.startsWith(BOOTSTRAP_TOKEN_ID + ":")) {
      const current = this.bootstrapToken ? `${BOOTSTRAP_TOKEN_ID}:${sha256Hex(this.bootstrapToken)}` : null;
      return current !== null && safeEqual(id, current) ? BOOTSTRAP_PRINCIPAL : null;
    }
    const row = this.sqlite.query("SELECT id, name, role, policy FROM management_tokens WHERE id = ? AND revoked_at IS NULL").get(id) as Omit<TokenRow, "created_at" | "revoked_at"> | null;
    return row ? { tokenId: row.id, name: row.name, role: row.role, policy: row.policy === null ? null : JSON.parse(row.policy) } : null;
  }

  verify(token: string | null | undefined): boolean {
    return this.authenticate(token) !== null;
  }
}
