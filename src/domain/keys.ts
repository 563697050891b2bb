import { and, desc, eq, gt, isNotNull, isNull, lt, lte, sql, type SQL } from "drizzle-orm";
import { z } from "zod";
import type { Db } from "../db/connection.ts";
import { keySpendDays, vaultKeys, type VaultKeyRow } from "../db/schema.ts";
import { formatDuration, parseDurationMs } from "../duration.ts";
import { ApiError, fieldIssues, validationError } from "../errors.ts";
import { newId } from "../ids.ts";
import { decimalToMicros, microsToUsd } from "../money.ts";
import { VENDORS, type VendorName } from "../vendors/types.ts";
import { randomToken, sha256Hex } from "./crypto.ts";
import { parseEndpointRule } from "./endpoints.ts";
import type { EventLog } from "./events.ts";
import { labelCondition } from "./label-filter.ts";
import { parsePolicy, policyError, policyViolations, type KeyBounds, type Policy } from "./policy.ts";
import { utcDay } from "./time.ts";
import { actorOf, type Principal } from "./tokens.ts";

/** Vault keys are "vk_" + 32 random bytes; only their SHA-256 is stored. */
export const VAULT_KEY_PREFIX = "vk_";
export const MAX_LABEL_LENGTH = 256;
/** A Stripe connected account id, as `stripe_accounts` on keys and on issuer policies take it. */
export const STRIPE_ACCOUNT_ID = /^acct_[A-Za-z0-9]{1,64}$/;
const MAX_DEDUPE_WINDOW_MS = 86_400_000;

export const usd = (field: string) =>
  z.number({ error: `${field} must be a number of US dollars` }).transform((n, ctx) => {
    const micros = n >= 0 ? decimalToMicros(n) : null;
    if (micros === null || micros > 1e15) {
      ctx.addIssue({ code: "custom", message: `${field} must be ≥ 0 with at most 6 decimals` });
      return z.NEVER;
    }
    return micros;
  });

export const duration = (field: string, maxMs: number) =>
  z.string({ error: `${field} must be a duration string like "30s", "15m", "4h" or "7d"` }).transform((text, ctx) => {
    const ms = parseDurationMs(text);
    if (ms === null || ms <= 0) {
      ctx.addIssue({ code: "custom", message: `${field} must be a positive duration like "30s", "15m", "4h" or "7d"` });
      return z.NEVER;
    }
    if (ms > maxMs) {
      ctx.addIssue({ code: "custom", message: `${field} must be at most ${formatDuration(maxMs, text)}` });
      return z.NEVER;
    }
    return ms;
  });

export const endpoint = z.string().superRefine((entry, ctx) => {
  const rule = parseEndpointRule(entry);
  if (typeof rule === "string") return void ctx.addIssue({ code: "custom", message: rule });
  // Rules match the vendor's own path (what is forwarded), never Keybrake's /{vendor} routing
  // prefix: "POST /stripe/v1/…" would be accepted and then refuse every call.
  const first = rule.segments[0];
  if (first !== undefined && (VENDORS as readonly string[]).includes(first)) {
    const rest = "/" + rule.segments.slice(1).join("/");
    ctx.addIssue({ code: "custom", message: `"${entry.trim()}": drop the /${first} prefix; rules use the vendor's own path, e.g. "${rule.method} ${rest}"` });
  }
});

const metadataValue = z.union([z.string().max(500), z.number(), z.boolean(), z.null()], {
  error: "metadata values must be strings (≤ 500 chars), numbers, booleans or null",
});

export function issueKeySchema(maxTtlMs: number) {
  return z.strictObject({
    vendor: z.enum(VENDORS, { error: `vendor must be one of ${VENDORS.join(", ")}` }),
    daily_usd_cap: usd("daily_usd_cap"),
    total_usd_cap: usd("total_usd_cap").optional().nullable(),
    allowed_endpoints: z
      .array(endpoint, { error: 'allowed_endpoints must be a list of "METHOD /path"' })
      .min(1, "allowed_endpoints must not be empty")
      .max(100, "allowed_endpoints takes at most 100 entries"),
    expires_in: duration("expires_in", maxTtlMs),
    agent_run_label: z
      .string({ error: "agent_run_label must be a string" })
      .trim()
      .min(1, "agent_run_label must not be empty")
      .max(MAX_LABEL_LENGTH, `agent_run_label must be at most ${MAX_LABEL_LENGTH} characters`),
    metadata: z
      .record(z.string().max(40, "metadata keys are at most 40 characters"), metadataValue, {
        error: "metadata must be a flat JSON object",
      })
      .refine((m) => Object.keys(m).length <= 50, "metadata takes at most 50 keys")
      .optional(),
    dedupe_window: duration("dedupe_window", MAX_DEDUPE_WINDOW_MS).optional(),
    require_idempotency_key: z.boolean({ error: "require_idempotency_key must be true or false" }).optional(),
    allow_unpriced: z.boolean({ error: "allow_unpriced must be true or false" }).optional(),
    stripe_accounts: z
      .array(z.string().regex(STRIPE_ACCOUNT_ID, "stripe_accounts entries are connected account ids (acct_…)"), {
        error: "stripe_accounts must be a list of connected account ids",
      })
      .max(100, "stripe_accounts takes at most 100 entries")
      .optional(),
  });
}

export type KeyStatus = "active" | "revoked" | "expired";

export function keyStatus(row: Pick<VaultKeyRow, "revokedAt" | "expiresAt">, now = Date.now()): KeyStatus {
  if (row.revokedAt !== null) return "revoked";
  return row.expiresAt <= now ? "expired" : "active";
}

const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());

/** The public shape of a key (never its secret). */
export function presentKey(row: VaultKeyRow, now = Date.now()) {
  return {
    key_id: row.id,
    key_hint: row.keyHint,
    vendor: row.vendor,
    status: keyStatus(row, now),
    daily_usd_cap: microsToUsd(row.dailyCapMicros),
    total_usd_cap: row.totalCapMicros === null ? null : microsToUsd(row.totalCapMicros),
    allowed_endpoints: row.allowedEndpoints,
    agent_run_label: row.agentRunLabel,
    metadata: row.metadata,
    dedupe_window_seconds: row.dedupeWindowMs === null ? null : row.dedupeWindowMs / 1000,
    require_idempotency_key: row.requireIdempotencyKey,
    allow_unpriced: row.allowUnpriced,
    stripe_accounts: row.stripeAccounts ?? [],
    expires_at: iso(row.expiresAt),
    created_at: iso(row.createdAt),
    revoked_at: iso(row.revokedAt),
    issued_by_token_id: row.issuedByTokenId,
  };
}

/** PATCH /vault/keys/{key_id}: the live values a change may touch (SPEC §2). */
export function updateKeySchema(maxTtlMs: number) {
  return z
    .strictObject({
      daily_usd_cap: usd("daily_usd_cap").optional(),
      total_usd_cap: usd("total_usd_cap").optional().nullable(),
      expires_in: duration("expires_in", maxTtlMs).optional(),
    })
    .refine((b) => Object.keys(b).length > 0, "send at least one of daily_usd_cap, total_usd_cap, expires_in");
}

/** A stored issuer policy, parsed; a policy that no longer parses bounds everything to nothing. */
function issuerPolicy(p: Principal): Policy {
  try {
    return parsePolicy(p.policy, Number.MAX_SAFE_INTEGER);
  } catch {
    return { vendors: [], maxDailyMicros: 0, maxTotalMicros: 0, maxExpiresInMs: 0, allowedEndpoints: [] };
  }
}

/**
 * Refuses (403 policy_violation, every field named) a key outside an issuer's policy; admins are
 * unbounded. An issuer can never let unpriced writes through: they cost $0 against every cap, so
 * no policy bound would hold for them.
 */
function enforcePolicy(by: Principal, key: KeyBounds & { allowUnpriced?: boolean }, fields: ReadonlySet<string> | "all" = "all"): void {
  if (by.role !== "issuer") return;
  const issues = policyViolations(issuerPolicy(by), key, fields);
  if (key.allowUnpriced) issues.push({ field: "allow_unpriced", message: "issuer tokens cannot issue keys that let unpriced writes through; ask an admin" });
  if (issues.length) throw policyError(issues);
}

/** Issuers see only the keys they issued; admins and viewers see all. */
function ownership(scope: Principal | undefined): SQL | undefined {
  return scope?.role === "issuer" ? eq(vaultKeys.issuedByTokenId, scope.tokenId) : undefined;
}

export interface KeyListFilter {
  label?: string;
  vendor?: VendorName;
  status?: KeyStatus;
  cursor?: string;
  limit: number;
}

export class KeyService {
  constructor(
    private readonly db: Db,
    private readonly maxTtlMs: number,
    private readonly events?: EventLog,
  ) {}

  /**
   * Validates the body of POST /vault/keys (400), bounds it by an issuer's policy (403), and stores
   * the key with its key.issued event; the vault key is returned only here.
   */
  issue(body: unknown, by: Principal, now = Date.now()): { row: VaultKeyRow; vaultKey: string } {
    const parsed = issueKeySchema(this.maxTtlMs).safeParse(body);
    if (!parsed.success) throw validationError(fieldIssues(parsed.error.issues));
    const input = parsed.data;
    enforcePolicy(by, {
      vendor: input.vendor,
      agentRunLabel: input.agent_run_label,
      dailyCapMicros: input.daily_usd_cap,
      totalCapMicros: input.total_usd_cap ?? null,
      expiresInMs: input.expires_in,
      allowedEndpoints: input.allowed_endpoints,
      allowUnpriced: input.allow_unpriced ?? false,
      stripeAccounts: input.stripe_accounts,
    });

    const vaultKey = VAULT_KEY_PREFIX + randomToken(32);
    const row: VaultKeyRow = {
      id: newId("key", now),
      keyHash: sha256Hex(vaultKey),
      keyHint: vaultKey.slice(0, 10),
      vendor: input.vendor,
      dailyCapMicros: input.daily_usd_cap,
      totalCapMicros: input.total_usd_cap ?? null,
      allowedEndpoints: input.allowed_endpoints.map((e) => e.trim()),
      agentRunLabel: input.agent_run_label,
      metadata: input.metadata ?? {},
      dedupeWindowMs: input.dedupe_window ?? null,
      requireIdempotencyKey: input.require_idempotency_key ?? false,
      allowUnpriced: input.allow_unpriced ?? false,
      expiresAt: now + input.expires_in,
      createdAt: now,
      revokedAt: null,
      spentTotalMicros: 0,
      reservedTotalMicros: 0,
      stripeAccounts: input.stripe_accounts?.length ? input.stripe_accounts : null,
      issuedByTokenId: by.tokenId,
    };
    this.db.sqlite
      .transaction(() => {
        this.db.orm.insert(vaultKeys).values(row).run();
        this.events?.record(
          {
            type: "key.issued",
            actor: actorOf(by),
            target: row.id,
            data: { key_id: row.id, agent_run_label: row.agentRunLabel, vendor: row.vendor, cap_usd: microsToUsd(row.dailyCapMicros), total_cap_usd: row.totalCapMicros === null ? null : microsToUsd(row.totalCapMicros) },
          },
          now,
        );
      })
      .immediate();
    return { row, vaultKey };
  }

  /**
   * One key; for an issuer only one it issued. Someone else's key is 404, not 403, so a leaked
   * issuer token cannot even learn which key ids exist.
   */
  get(keyId: string, scope?: Principal): VaultKeyRow {
    const row = this.db.orm.select().from(vaultKeys).where(and(eq(vaultKeys.id, keyId), ownership(scope))).get();
    if (!row) throw new ApiError("not_found", `No vault key ${keyId}`);
    return row;
  }

  /**
   * PATCH: new daily/total caps and/or expiry (from now), bounded by an issuer's policy, with its
   * key.updated event, in one IMMEDIATE transaction. The ledger re-reads caps and expiry inside each
   * admission transaction, so the next call on any process sees the change. A cap lowered below
   * what is already spent is allowed: further calls are refused as cap hits.
   */
  update(keyId: string, body: unknown, by: Principal, now = Date.now()): VaultKeyRow {
    const parsed = updateKeySchema(this.maxTtlMs).safeParse(body);
    if (!parsed.success) throw validationError(fieldIssues(parsed.error.issues));
    const change = parsed.data;
    return this.db.sqlite
      .transaction(() => {
        const before = this.get(keyId, by);
        if (before.revokedAt !== null) throw new ApiError("conflict", `Vault key ${keyId} is revoked; a revoked key cannot be changed.`);
        const after: VaultKeyRow = {
          ...before,
          dailyCapMicros: change.daily_usd_cap ?? before.dailyCapMicros,
          totalCapMicros: change.total_usd_cap === undefined ? before.totalCapMicros : change.total_usd_cap,
          expiresAt: change.expires_in === undefined ? before.expiresAt : now + change.expires_in,
        };
        // Only the fields being changed are checked: an untouched field keeps what it was issued with.
        enforcePolicy(
          by,
          {
            vendor: after.vendor,
            agentRunLabel: after.agentRunLabel,
            dailyCapMicros: after.dailyCapMicros,
            totalCapMicros: after.totalCapMicros,
            expiresInMs: change.expires_in,
            allowedEndpoints: after.allowedEndpoints,
          },
          new Set(Object.keys(change)),
        );
        this.db.orm
          .update(vaultKeys)
          .set({ dailyCapMicros: after.dailyCapMicros, totalCapMicros: after.totalCapMicros, expiresAt: after.expiresAt })
          .where(eq(vaultKeys.id, keyId))
          .run();
        const changes: Record<string, unknown> = {};
        if (change.daily_usd_cap !== undefined) changes.daily_usd_cap = { from: microsToUsd(before.dailyCapMicros), to: microsToUsd(after.dailyCapMicros) };
        if (change.total_usd_cap !== undefined) {
          const usdOrNull = (m: number | null) => (m === null ? null : microsToUsd(m));
          changes.total_usd_cap = { from: usdOrNull(before.totalCapMicros), to: usdOrNull(after.totalCapMicros) };
        }
        if (change.expires_in !== undefined) changes.expires_at = { from: iso(before.expiresAt), to: iso(after.expiresAt) };
        this.events?.record(
          { type: "key.updated", actor: actorOf(by), target: keyId, data: { key_id: keyId, agent_run_label: after.agentRunLabel, cap_usd: microsToUsd(after.dailyCapMicros), changes } },
          now,
        );
        return after;
      })
      .immediate();
  }

  /**
   * The same change to every active key of a run (the admin pages' "raise the run's cap"), all or
   * nothing in one transaction, one key.updated event per key.
   */
  updateRun(label: string, body: unknown, by: Principal, now = Date.now()): VaultKeyRow[] {
    return this.db.sqlite
      .transaction(() => {
        const ids = this.db.orm
          .select({ id: vaultKeys.id })
          .from(vaultKeys)
          .where(and(eq(vaultKeys.agentRunLabel, label), isNull(vaultKeys.revokedAt), gt(vaultKeys.expiresAt, now), ownership(by)))
          .all();
        return ids.map(({ id }) => this.update(id, body, by, now));
      })
      .immediate();
  }

  list(f: KeyListFilter, now = Date.now(), scope?: Principal): { rows: VaultKeyRow[]; nextCursor: string | null } {
    const where: SQL[] = [];
    const own = ownership(scope);
    if (own) where.push(own);
    if (f.label !== undefined) where.push(labelCondition(vaultKeys.agentRunLabel, f.label) ?? sql`1`);
    if (f.vendor) where.push(eq(vaultKeys.vendor, f.vendor));
    if (f.status === "revoked") where.push(isNotNull(vaultKeys.revokedAt));
    if (f.status === "active") where.push(isNull(vaultKeys.revokedAt), gt(vaultKeys.expiresAt, now));
    if (f.status === "expired") where.push(isNull(vaultKeys.revokedAt), lte(vaultKeys.expiresAt, now));
    if (f.cursor) where.push(lt(vaultKeys.id, f.cursor));
    const rows = this.db.orm
      .select()
      .from(vaultKeys)
      .where(and(...where))
      .orderBy(desc(vaultKeys.id))
      .limit(f.limit + 1)
      .all();
    const more = rows.length > f.limit;
    if (more) rows.pop();
    return { rows, nextCursor: more ? rows[rows.length - 1]!.id : null };
  }

  /**
   * Sets revoked_at once (with its key.revoked event); a second call returns the same revocation and
   * records nothing. Nothing is deleted. An issuer can revoke only keys it issued (others are 404).
   */
  revoke(keyId: string, by: Principal, now = Date.now()): VaultKeyRow {
    return this.db.sqlite
      .transaction(() => {
        const row = this.get(keyId, by);
        if (row.revokedAt !== null) return row;
        this.db.orm.update(vaultKeys).set({ revokedAt: now }).where(eq(vaultKeys.id, keyId)).run();
        this.events?.record(
          { type: "key.revoked", actor: actorOf(by), target: keyId, data: { key_id: keyId, agent_run_label: row.agentRunLabel, vendor: row.vendor } },
          now,
        );
        return { ...row, revokedAt: now };
      })
      .immediate();
  }

  /**
   * Revokes every key of a run (for an issuer: every key of the run that it issued, nothing else);
   * `newlyRevoked` counts the keys this call revoked. One run.revoked event when any was.
   */
  revokeByLabel(label: string, by: Principal, now = Date.now()): { rows: VaultKeyRow[]; newlyRevoked: number } {
    return this.db.sqlite
      .transaction(() => {
        const own = ownership(by);
        const revoked = this.db.orm
          .update(vaultKeys)
          .set({ revokedAt: now })
          .where(and(eq(vaultKeys.agentRunLabel, label), isNull(vaultKeys.revokedAt), own))
          .returning({ id: vaultKeys.id })
          .all();
        const rows = this.db.orm.select().from(vaultKeys).where(and(eq(vaultKeys.agentRunLabel, label), own)).orderBy(desc(vaultKeys.id)).all();
        if (revoked.length > 0) {
          this.events?.record(
            { type: "run.revoked", actor: actorOf(by), target: label, data: { agent_run_label: label, key_ids: revoked.map((r) => r.id), revoked: revoked.length } },
            now,
          );
        }
        return { rows, newlyRevoked: revoked.length };
      })
      .immediate();
  }

  /** Spend today (UTC) and over the key's life, in USD. */
  spend(row: VaultKeyRow, now = Date.now()) {
    const today = this.db.orm
      .select()
      .from(keySpendDays)
      .where(and(eq(keySpendDays.keyId, row.id), eq(keySpendDays.day, utcDay(now))))
      .get();
    const spent = today?.spentMicros ?? 0;
    const reserved = today?.reservedMicros ?? 0;
    return {
      spent_today_usd: microsToUsd(spent),
      reserved_usd: microsToUsd(reserved),
      remaining_today_usd: microsToUsd(remainingMicros(row, spent, reserved)),
      spent_total_usd: microsToUsd(row.spentTotalMicros),
    };
  }

  /** Total keys by status, for metrics and the admin overview. */
  countByStatus(now = Date.now()): Record<KeyStatus, number> {
    const r = this.db.orm
      .select({
        revoked: sql<number>`sum(${vaultKeys.revokedAt} IS NOT NULL)`,
        expired: sql<number>`sum(${vaultKeys.revokedAt} IS NULL AND ${vaultKeys.expiresAt} <= ${now})`,
        active: sql<number>`sum(${vaultKeys.revokedAt} IS NULL AND ${vaultKeys.expiresAt} > ${now})`,
      })
      .from(vaultKeys)
      .get();
    return { active: r?.active ?? 0, revoked: r?.revoked ?? 0, expired: r?.expired ?? 0 };
  }
}

/** What may still be reserved today: the daily cap, and the lifetime cap where there is one. */
export function remainingMicros(
  key: Pick<VaultKeyRow, "dailyCapMicros" | "totalCapMicros" | "spentTotalMicros" | "reservedTotalMicros">,
  spentToday: number,
  reservedToday: number,
): number {
  let left = key.dailyCapMicros - spentToday - reservedToday;
  if (key.totalCapMicros !== null) {
    left = Math.min(left, key.totalCapMicros - key.spentTotalMicros - key.reservedTotalMicros);
  }
  return Math.max(0, left);
}
