import { z } from "zod";
import { ApiError, fieldIssues, validationError } from "../errors.ts";
import { newId } from "../ids.ts";
import { randomToken, safeEqual, sha256Hex } from "./crypto.ts";
import type { Actor, NewEvent } from "./events.ts";
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

/** A token to store: its SHA-256, never the token itself. */
export interface NewToken extends TokenInfo {
  tokenHash: string;
}

/** What authenticate() needs of a live token. */
export type LiveToken = Pick<TokenInfo, "id" | "name" | "role" | "policy">;

/**
 * Where management tokens live (src/store/sqlite/tokens.ts, src/store/pg/tokens.ts). Writes record
 * their event in the same transaction.
 */
export interface TokenStorage {
  insert(token: NewToken, event: NewEvent): Promise<void>;
  /** insert(), but only while no live token exists: decided atomically across processes and replicas. False when one exists. */
  insertIfNone(token: NewToken, event: NewEvent): Promise<boolean>;
  /** Newest first, revoked ones included. */
  list(): Promise<TokenInfo[]>;
  get(id: string): Promise<TokenInfo | null>;
  /**
   * Revokes a live token and ends its admin sessions, recording the event `describe` builds, in one
   * transaction; a revoked token is returned unchanged with no event. Null for an unknown id.
   */
  revoke(id: string, now: number, describe: (t: TokenInfo, sessionsEnded: number) => NewEvent): Promise<TokenInfo | null>;
  countLive(): Promise<number>;
  /** The live token with this SHA-256: one indexed lookup, made on every management request. */
  liveByHash(tokenHash: string): Promise<LiveToken | null>;
  liveById(id: string): Promise<LiveToken | null>;
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

const principalOf = (t: LiveToken): Principal => ({ tokenId: t.id, name: t.name, role: t.role, policy: t.policy });

/**
 * Management tokens. `authenticate` reads the store on every request (one indexed lookup):
 * nothing is cached, so a revoke is seen by the next request of every process and replica.
 */
export class TokenStore {
  constructor(
    private readonly store: TokenStorage,
    private readonly bootstrapToken?: string,
    /** KEYBRAKE_MAX_KEY_TTL: a policy's max_expires_in cannot exceed it. */
    private readonly maxTtlMs = Number.MAX_SAFE_INTEGER,
  ) {}

  /**
   * Validates a POST /tokens body (400 naming each bad field) and mints the token; `token` is
   * returned only here. An issuer needs a policy; admins and viewers take none.
   */
  async createFromBody(body: unknown, actor: Actor | null, now = Date.now()): Promise<{ info: TokenInfo; token: string }> {
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
    const { token, info, event } = this.mint(name, actor, role, role === "issuer" ? (policy as PolicyInput) : null, now);
    await this.store.insert({ ...info, tokenHash: sha256Hex(token) }, event);
    return { info, token };
  }

  /** A new token, what is shown of it and its event; nothing is stored yet. */
  private mint(name: string, actor: Actor | null, role: Role, policy: PolicyInput | null, now: number) {
    const token = MANAGEMENT_TOKEN_PREFIX + randomToken(32);
    const id = newId("tok", now);
    // Stored as JSON and read back as such: a round trip keeps what GET /tokens shows equal to what was stored.
    const info: TokenInfo = { id, name, role, policy: policy ? JSON.parse(JSON.stringify(policy)) : null, createdAt: now, revokedAt: null };
    const event: NewEvent = { type: "token.created", actor, target: id, data: { token_id: id, name, role } };
    return { token, info, event };
  }

  list(): Promise<TokenInfo[]> {
    return this.store.list();
  }

  async get(id: string): Promise<TokenInfo> {
    return (await this.store.get(id)) ?? notFound(id);
  }

  /**
   * Revokes at once and ends every admin session opened with the token, in one transaction with
   * its event. Idempotent: a second call returns the same revocation and records nothing.
   */
  async revoke(id: string, actor: Actor | null, now = Date.now()): Promise<TokenInfo> {
    const revoked = await this.store.revoke(id, now, (t, sessionsEnded) => ({
      type: "token.revoked",
      actor,
      target: id,
      data: { token_id: id, name: t.name, role: t.role, sessions_ended: sessionsEnded },
    }));
    return revoked ?? notFound(id);
  }

  count(): Promise<number> {
    return this.store.countLive();
  }

  /** Mints the first token when there is neither a stored one nor a bootstrap token; returns it so it can be printed once. */
  async ensureFirstToken(now = Date.now()): Promise<string | null> {
    if (this.bootstrapToken) return null;
    const { token, info, event } = this.mint("first-start", null, "admin", null, now);
    return (await this.store.insertIfNone({ ...info, tokenHash: sha256Hex(token) }, event)) ? token : null;
  }

  /** The principal a token stands for, or null for an unknown or revoked token. */
  async authenticate(token: string | null | undefined): Promise<Principal | null> {
    if (!token) return null;
    if (this.bootstrapToken && safeEqual(token, this.bootstrapToken)) return BOOTSTRAP_PRINCIPAL;
    const row = await this.store.liveByHash(sha256Hex(token));
    return row ? principalOf(row) : null;
  }

  /**
   * What an admin session stores to name its token: the token id, or for the bootstrap token
   * "bootstrap:" + its SHA-256, so changing KEYBRAKE_ADMIN_TOKEN ends the sessions opened with the old one.
   */
  sessionRef(p: Principal): string {
    return p.tokenId === BOOTSTRAP_TOKEN_ID && this.bootstrapToken ? `${BOOTSTRAP_TOKEN_ID}:${sha256Hex(this.bootstrapToken)}` : p.tokenId;
  }

  /** The principal behind a session's token reference (see sessionRef); null once revoked or changed. */
  async principalById(id: string | null): Promise<Principal | null> {
    if (!id) return null;
    if (id.startsWith(BOOTSTRAP_TOKEN_ID + ":")) {
      const current = this.bootstrapToken ? `${BOOTSTRAP_TOKEN_ID}:${sha256Hex(this.bootstrapToken)}` : null;
      return current !== null && safeEqual(id, current) ? BOOTSTRAP_PRINCIPAL : null;
    }
    const row = await this.store.liveById(id);
    return row ? principalOf(row) : null;
  }

  async verify(token: string | null | undefined): Promise<boolean> {
    return (await this.authenticate(token)) !== null;
  }
}

function notFound(id: string): never {
  const hint = id === BOOTSTRAP_TOKEN_ID ? " (KEYBRAKE_ADMIN_TOKEN is retired by unsetting it and restarting)" : "";
  throw new ApiError("not_found", `No management token ${id}${hint}`);
}
