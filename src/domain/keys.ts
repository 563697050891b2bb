import { z } from "zod";
import type { VaultKeyRow } from "../db/schema.ts";
import { formatDuration, parseDurationMs } from "../duration.ts";
import { ApiError, fieldIssues, validationError } from "../errors.ts";
import { newId } from "../ids.ts";
import { decimalToMicros, microsToUsd } from "../money.ts";
import { VENDORS, type VendorName } from "../vendors/types.ts";
import { randomToken, sha256Hex } from "./crypto.ts";
import { parseEndpointRule } from "./endpoints.ts";
import type { NewEvent } from "./events.ts";
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
const issuedBy = (scope: Principal | undefined): string | undefined => (scope?.role === "issuer" ? scope.tokenId : undefined);

/** Which keys a query sees (GET /vault/keys, the admin lists and counts). */
export interface KeyFilter {
  /** Exact, or a prefix ending in `*` (src/domain/label-filter.ts). */
  label?: string;
  vendor?: VendorName;
  status?: KeyStatus;
  /** With status "active": also the keys revoked in the last `recentGraceMs`, so a row just revoked stays in the admin list. */
  recentGraceMs?: number;
}

export interface KeyListFilter extends KeyFilter {
  /** A key id from next_cursor: continue with older keys. */
  cursor?: string;
  limit: number;
}

/** The keys a store statement acts on: one key, or the live keys of a run; for an issuer only those it issued. */
export type KeySelector = { issuedBy?: string } & ({ keyId: string } | { label: string; liveAt: number });

/** What a change of one locked key writes: the new values, and the event that reports them. */
export interface KeyChange {
  set: Partial<Pick<VaultKeyRow, "dailyCapMicros" | "totalCapMicros" | "expiresAt" | "revokedAt">>;
  event: NewEvent;
}

/** Where vault keys live (src/store/sqlite/keys.ts, src/store/pg/keys.ts). Ordering is newest first (by id) everywhere. */
export interface KeyStore {
  /** Stores a new key with its key.issued event, in one transaction. */
  insert(row: VaultKeyRow, event: NewEvent, now: number): Promise<void>;
  get(keyId: string, issuedBy?: string): Promise<VaultKeyRow | null>;
  /**
   * In one transaction: locks the selected keys (in id order; the rows the ledger's admission
   * locks), asks `change` what to write given each key's current row (null: nothing), and writes
   * it with its event. `change` runs inside the transaction and must not await; if it throws,
   * nothing is written. Returns the keys as they are afterwards, newest first.
   */
  change(which: KeySelector, change: (row: VaultKeyRow) => KeyChange | null, now: number): Promise<VaultKeyRow[]>;
  /**
   * Revokes every unrevoked key of a run (for `issuedBy`: only its own) in one transaction, with
   * the event `event` returns for the ids revoked (none when there were none). Returns every key of
   * the run that `issuedBy` sees, newest first, and the ids this call revoked.
   */
  revokeRun(label: string, issuedBy: string | undefined, event: (revokedIds: string[]) => NewEvent, now: number): Promise<{ rows: VaultKeyRow[]; revokedIds: string[] }>;
  /** Keys matching the filter, newest first, older than the cursor; at most `limit`. */
  list(f: KeyListFilter & { issuedBy?: string }, now: number): Promise<VaultKeyRow[]>;
  countByStatus(f: Pick<KeyFilter, "label" | "vendor">, now: number): Promise<Record<KeyStatus, number>>;
  /**
   * The key's spend on `day` (YYYY-MM-DD, UTC; 0 before its first call) with its lifetime totals,
   * read in ONE statement: a settlement moves money between both rows in one transaction, so
   * reading them apart could show it neither reserved nor spent (a settlement on another replica
   * committing between the two reads). Null when there is no such key.
   */
  spendOn(keyId: string, day: string): Promise<KeySpend | null>;
}

export interface KeySpend {
  spentMicros: number;
  reservedMicros: number;
  spentTotalMicros: number;
  reservedTotalMicros: number;
}

/** One page of a list asked for with `limit + 1` rows: the page, and the cursor of the next one. */
export function pageOf<T>(rows: T[], limit: number, cursorOf: (row: T) => string): { rows: T[]; nextCursor: string | null } {
  const more = rows.length > limit;
  if (more) rows.length = limit;
  return { rows, nextCursor: more ? cursorOf(rows[limit - 1]!) : null };
}

const usdOrNull = (m: number | null) => (m === null ? null : microsToUsd(m));

export class KeyService {
  constructor(
    private readonly store: KeyStore,
    private readonly maxTtlMs: number,
  ) {}

  /**
   * Validates the body of POST /vault/keys (400), bounds it by an issuer's policy (403), and stores
   * the key with its key.issued event; the vault key is returned only here.
   */
  async issue(body: unknown, by: Principal, now = Date.now()): Promise<{ row: VaultKeyRow; vaultKey: string }> {
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
    await this.store.insert(
      row,
      {
        type: "key.issued",
        actor: actorOf(by),
        target: row.id,
        data: { key_id: row.id, agent_run_label: row.agentRunLabel, vendor: row.vendor, cap_usd: microsToUsd(row.dailyCapMicros), total_cap_usd: usdOrNull(row.totalCapMicros) },
      },
      now,
    );
    return { row, vaultKey };
  }

  /**
   * One key; for an issuer only one it issued. Someone else's key is 404, not 403, so a leaked
   * issuer token cannot even learn which key ids exist.
   */
  async get(keyId: string, scope?: Principal): Promise<VaultKeyRow> {
    return (await this.store.get(keyId, issuedBy(scope))) ?? notFound(keyId);
  }

  /**
   * PATCH: new daily/total caps and/or expiry (from now), bounded by an issuer's policy, with its
   * key.updated event, in one transaction on the locked key row. The ledger re-reads caps and
   * expiry inside each admission transaction, so the next call on any process or replica sees the
   * change. A cap lowered below what is already spent is allowed: further calls are refused as cap hits.
   */
  async update(keyId: string, body: unknown, by: Principal, now = Date.now()): Promise<VaultKeyRow> {
    const change = this.parseChange(body);
    const [after] = await this.store.change({ keyId, issuedBy: issuedBy(by) }, (row) => keyUpdate(row, change, by, now), now);
    return after ?? notFound(keyId);
  }

  /**
   * The same change to every active key of a run (the admin pages' "raise the run's cap"), all or
   * nothing in one transaction, one key.updated event per key.
   */
  async updateRun(label: string, body: unknown, by: Principal, now = Date.now()): Promise<VaultKeyRow[]> {
    const change = this.parseChange(body);
    return this.store.change({ label, liveAt: now, issuedBy: issuedBy(by) }, (row) => keyUpdate(row, change, by, now), now);
  }

  private parseChange(body: unknown): KeyUpdate {
    const parsed = updateKeySchema(this.maxTtlMs).safeParse(body);
    if (!parsed.success) throw validationError(fieldIssues(parsed.error.issues));
    return parsed.data;
  }

  async list(f: KeyListFilter, now = Date.now(), scope?: Principal): Promise<{ rows: VaultKeyRow[]; nextCursor: string | null }> {
    const rows = await this.store.list({ ...f, issuedBy: issuedBy(scope), limit: f.limit + 1 }, now);
    return pageOf(rows, f.limit, (r) => r.id);
  }

  /**
   * Sets revoked_at once (with its key.revoked event); a second call returns the same revocation and
   * records nothing, also when two replicas revoke at the same moment (the row is locked). Nothing
   * is deleted. An issuer can revoke only keys it issued (others are 404).
   */
  async revoke(keyId: string, by: Principal, now = Date.now()): Promise<VaultKeyRow> {
    const [row] = await this.store.change(
      { keyId, issuedBy: issuedBy(by) },
      (row) =>
        row.revokedAt !== null
          ? null
          : { set: { revokedAt: now }, event: { type: "key.revoked", actor: actorOf(by), target: keyId, data: { key_id: keyId, agent_run_label: row.agentRunLabel, vendor: row.vendor } } },
      now,
    );
    return row ?? notFound(keyId);
  }

  /**
   * Revokes every key of a run (for an issuer: every key of the run that it issued, nothing else);
   * `newlyRevoked` counts the keys this call revoked. One run.revoked event when any was.
   */
  async revokeByLabel(label: string, by: Principal, now = Date.now()): Promise<{ rows: VaultKeyRow[]; newlyRevoked: number }> {
    const { rows, revokedIds } = await this.store.revokeRun(
      label,
      issuedBy(by),
      (ids) => ({ type: "run.revoked", actor: actorOf(by), target: label, data: { agent_run_label: label, key_ids: ids, revoked: ids.length } }),
      now,
    );
    return { rows, newlyRevoked: revokedIds.length };
  }

  /** Spend today (UTC) and over the key's life, in USD, as of one moment. */
  async spend(row: VaultKeyRow, now = Date.now()) {
    const s = await this.store.spendOn(row.id, utcDay(now));
    const spent = s?.spentMicros ?? 0;
    const reserved = s?.reservedMicros ?? 0;
    const totals = s ? { ...row, spentTotalMicros: s.spentTotalMicros, reservedTotalMicros: s.reservedTotalMicros } : row;
    return {
      spent_today_usd: microsToUsd(spent),
      reserved_usd: microsToUsd(reserved),
      remaining_today_usd: microsToUsd(remainingMicros(totals, spent, reserved)),
      spent_total_usd: microsToUsd(totals.spentTotalMicros),
    };
  }

  /** Keys by status (all, or under a label and vendor filter), for metrics and the admin overview. */
  countByStatus(f: Pick<KeyFilter, "label" | "vendor"> = {}, now = Date.now()): Promise<Record<KeyStatus, number>> {
    return this.store.countByStatus(f, now);
  }
}

function notFound(keyId: string): never {
  throw new ApiError("not_found", `No vault key ${keyId}`);
}

type KeyUpdate = z.infer<ReturnType<typeof updateKeySchema>>;

/** What a PATCH writes to one key: its new values (within an issuer's policy) and its key.updated event; 409 for a revoked key. */
function keyUpdate(before: VaultKeyRow, change: KeyUpdate, by: Principal, now: number): KeyChange {
  if (before.revokedAt !== null) throw new ApiError("conflict", `Vault key ${before.id} is revoked; a revoked key cannot be changed.`);
  const after = {
    dailyCapMicros: change.daily_usd_cap ?? before.dailyCapMicros,
    totalCapMicros: change.total_usd_cap === undefined ? before.totalCapMicros : change.total_usd_cap,
    expiresAt: change.expires_in === undefined ? before.expiresAt : now + change.expires_in,
  };
  // Only the fields being changed are checked: an untouched field keeps what it was issued with.
  enforcePolicy(
    by,
    {
      vendor: before.vendor,
      agentRunLabel: before.agentRunLabel,
      dailyCapMicros: after.dailyCapMicros,
      totalCapMicros: after.totalCapMicros,
      expiresInMs: change.expires_in,
      allowedEndpoints: before.allowedEndpoints,
    },
    new Set(Object.keys(change)),
  );
  const changes: Record<string, unknown> = {};
  if (change.daily_usd_cap !== undefined) changes.daily_usd_cap = { from: microsToUsd(before.dailyCapMicros), to: microsToUsd(after.dailyCapMicros) };
  if (change.total_usd_cap !== undefined) changes.total_usd_cap = { from: usdOrNull(before.totalCapMicros), to: usdOrNull(after.totalCapMicros) };
  if (change.expires_in !== undefined) changes.expires_at = { from: iso(before.expiresAt), to: iso(after.expiresAt) };
  return {
    set: after,
    event: { type: "key.updated", actor: actorOf(by), target: before.id, data: { key_id: before.id, agent_run_label: before.agentRunLabel, cap_usd: microsToUsd(after.dailyCapMicros), changes } },
  };
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
