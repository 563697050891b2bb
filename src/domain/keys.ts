import { and, desc, eq, gt, isNotNull, isNull, lt, lte, sql, type SQL } from "drizzle-orm";
import { z } from "zod";
import type { Db } from "../db/connection.ts";
import { keySpendDays, vaultKeys, type VaultKeyRow } from "../db/schema.ts";
import { parseDurationMs } from "../duration.ts";
import { ApiError, fieldIssues, validationError } from "../errors.ts";
import { newId } from "../ids.ts";
import { decimalToMicros, microsToUsd } from "../money.ts";
import { VENDORS, type VendorName } from "../vendors/types.ts";
import { randomToken, sha256Hex } from "./crypto.ts";
import { parseEndpointRule } from "./endpoints.ts";
import { labelCondition } from "./label-filter.ts";
import { utcDay } from "./time.ts";

/** Vault keys are "vk_" + 32 random bytes; only their SHA-256 is stored. */
export const VAULT_KEY_PREFIX = "vk_";
export const MAX_LABEL_LENGTH = 256;
const MAX_DEDUPE_WINDOW_MS = 86_400_000;

const usd = (field: string) =>
  z.number({ error: `${field} must be a number of US dollars` }).transform((n, ctx) => {
    const micros = n >= 0 ? decimalToMicros(n) : null;
    if (micros === null || micros > 1e15) {
      ctx.addIssue({ code: "custom", message: `${field} must be ≥ 0 with at most 6 decimals` });
      return z.NEVER;
    }
    return micros;
  });

const duration = (field: string, maxMs: number) =>
  z.string({ error: `${field} must be a duration string like "30s", "15m", "4h" or "7d"` }).transform((text, ctx) => {
    const ms = parseDurationMs(text);
    if (ms === null || ms <= 0) {
      ctx.addIssue({ code: "custom", message: `${field} must be a positive duration like "30s", "15m", "4h" or "7d"` });
      return z.NEVER;
    }
    if (ms > maxMs) {
      ctx.addIssue({ code: "custom", message: `${field} must be at most ${Math.floor(maxMs / 1000)}s` });
      return z.NEVER;
    }
    return ms;
  });

const endpoint = z.string().superRefine((entry, ctx) => {
  const rule = parseEndpointRule(entry);
  if (typeof rule === "string") ctx.addIssue({ code: "custom", message: rule });
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
      .array(z.string().regex(/^acct_[A-Za-z0-9]{1,64}$/, "stripe_accounts entries are connected account ids (acct_…)"), {
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
  };
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
  ) {}

  /** Validates the body of POST /vault/keys and stores the key; the vault key is returned only here. */
  issue(body: unknown, now = Date.now()): { row: VaultKeyRow; vaultKey: string } {
    const parsed = issueKeySchema(this.maxTtlMs).safeParse(body);
    if (!parsed.success) throw validationError(fieldIssues(parsed.error.issues));
    const input = parsed.data;
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
    };
    this.db.orm.insert(vaultKeys).values(row).run();
    return { row, vaultKey };
  }

  get(keyId: string): VaultKeyRow {
    const row = this.db.orm.select().from(vaultKeys).where(eq(vaultKeys.id, keyId)).get();
    if (!row) throw new ApiError("not_found", `No vault key ${keyId}`);
    return row;
  }

  list(f: KeyListFilter, now = Date.now()): { rows: VaultKeyRow[]; nextCursor: string | null } {
    const where: SQL[] = [];
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

  /** Sets revoked_at once; a second call returns the same revocation. Nothing is deleted. */
  revoke(keyId: string, now = Date.now()): VaultKeyRow {
    this.db.orm
      .update(vaultKeys)
      .set({ revokedAt: now })
      .where(and(eq(vaultKeys.id, keyId), isNull(vaultKeys.revokedAt)))
      .run();
    return this.get(keyId);
  }

  /** Revokes every key of a run; `newlyRevoked` counts the keys this call revoked (the rest were already). */
  revokeByLabel(label: string, now = Date.now()): { rows: VaultKeyRow[]; newlyRevoked: number } {
    const revoked = this.db.orm
      .update(vaultKeys)
      .set({ revokedAt: now })
      .where(and(eq(vaultKeys.agentRunLabel, label), isNull(vaultKeys.revokedAt)))
      .returning({ id: vaultKeys.id })
      .all();
    const rows = this.db.orm.select().from(vaultKeys).where(eq(vaultKeys.agentRunLabel, label)).orderBy(desc(vaultKeys.id)).all();
    return { rows, newlyRevoked: revoked.length };
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
