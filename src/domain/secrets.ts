import { z } from "zod";
import { ApiError, fieldIssues, validationError } from "../errors.ts";
import { ADAPTERS } from "../vendors/index.ts";
import type { VendorName, VendorSecret } from "../vendors/types.ts";
import type { SecretBox } from "./crypto.ts";
import type { Actor, NewEvent } from "./events.ts";

/**
 * Real vendor secrets, AES-256-GCM encrypted in vendor_secrets. Write-only from
 * the outside: only configured / last 4 / updated_at ever leave this module,
 * apart from the decrypted secret handed to the forwarder.
 */
const SecretInput: Record<VendorName, z.ZodType<Record<string, string>>> = {
  stripe: z.strictObject({
    secret_key: z.string().trim().min(8, "secret_key must be a Stripe secret key (sk_… or rk_…)"),
  }),
  twilio: z.strictObject({
    account_sid: z.string().trim().regex(/^AC[0-9a-fA-F]{32}$/, "account_sid must be AC followed by 32 hex characters"),
    auth_token: z.string().trim().min(8, "auth_token must be a Twilio auth token"),
  }),
  resend: z.strictObject({ api_key: z.string().trim().min(8, "api_key must be a Resend API key (re_…)") }),
};

/** The variable each secret field comes from when the environment manages it (SPEC §1). */
export const SECRET_VARIABLES: Record<VendorName, Record<string, string>> = {
  stripe: { secret_key: "KEYBRAKE_STRIPE_SECRET_KEY" },
  twilio: { account_sid: "KEYBRAKE_TWILIO_ACCOUNT_SID", auth_token: "KEYBRAKE_TWILIO_AUTH_TOKEN" },
  resend: { api_key: "KEYBRAKE_RESEND_API_KEY" },
};

/** Stored secrets that the master key in use cannot decrypt: start-up must stop (SPEC §1). */
export class MasterKeyMismatch extends Error {
  /** `vendors` whose stored secrets do not decrypt; empty when only the data dir's key check failed. */
  constructor(readonly vendors: VendorName[]) {
    super(vendors.length ? `the master key cannot decrypt the stored secrets of ${vendors.join(", ")}` : "the master key is not the one this data dir was set up with");
  }
}

const MASTER_KEY_CHECK = "keybrake master key check";

export interface VendorStatus {
  vendor: VendorName;
  configured: boolean;
  /** Set by KEYBRAKE_* variables: the API and the admin pages refuse to change it (409 managed_by_env). */
  managed_by_env: boolean;
  fields: Record<string, { last4: string } | null>;
  updated_at: string | null;
}

/** One stored field of a vendor's secret, sealed by the master key (SecretBox). */
export interface SecretField {
  field: string;
  ciphertext: string;
  last4: string;
  updatedAt: number;
}

/** Where vendor secrets and the master key check live (src/store/sqlite/secrets.ts, src/store/pg/secrets.ts). */
export interface VendorSecretStorage {
  /**
   * How long get() may reuse a read of a vendor's stored secret. SQLite: 0, every proxied call reads
   * (an indexed lookup in the local file), so a rotation is seen at once by every process.
   * PostgreSQL: a short bound, so the proxy does not pay a network round trip per call.
   */
  readonly reuseReadsForMs: number;
  fields(vendor: VendorName): Promise<SecretField[]>;
  allCiphertexts(): Promise<{ vendor: VendorName; ciphertext: string }[]>;
  /** Stores `sealedCheck` unless a check is stored already (the first key wins); returns the stored one. */
  masterKeyCheck(sealedCheck: string): Promise<string>;
  /**
   * Stores a vendor's fields and records `event`, in one transaction that takes turns with every other
   * write of vendor secrets (across processes and replicas); when `unchanged(current)` says so, nothing
   * is written and it returns false.
   */
  write(vendor: VendorName, fields: Omit<SecretField, "updatedAt">[], now: number, event: NewEvent, unchanged?: (current: SecretField[]) => boolean): Promise<boolean>;
  /** Forgets every stored secret and the master key check; returns how many fields it forgot. */
  reset(): Promise<number>;
}

/**
 * A vendor whose secret is given by environment variables is *managed by the environment*: that
 * value is what the proxy uses, and nothing else can change it, so a restart can never bring back a
 * secret that was rotated away. Its value is also written (encrypted) to the store at start, so
 * that removing the variables later leaves the last secret in use rather than an older one.
 */
export class VendorSecretStore {
  /** Decrypted secrets by the ciphertexts they came from: a rotation (new ciphertexts) is never served from here. */
  private readonly cache = new Map<VendorName, { stamp: string; secret: VendorSecret; readAt: number }>();
  private readonly fromEnv: Partial<Record<VendorName, VendorSecret>> = {};

  constructor(
    private readonly store: VendorSecretStorage,
    private readonly box: SecretBox,
  ) {}

  /**
   * Throws MasterKeyMismatch unless every stored secret decrypts and the stored check value (sealed
   * under the first key the data dir or database met) opens: a wrong key is refused at start, not at
   * call time — on PostgreSQL, a replica started with another replica's key refused with it.
   */
  async verifyMasterKey(): Promise<void> {
    const rows = await this.store.allCiphertexts();
    const bad = [...new Set(rows.filter((r) => !this.box.canOpen(r.ciphertext)).map((r) => r.vendor))];
    if (bad.length) throw new MasterKeyMismatch(bad);
    const check = await this.store.masterKeyCheck(this.box.seal(MASTER_KEY_CHECK));
    if (!this.box.canOpen(check)) throw new MasterKeyMismatch([]);
  }

  /**
   * Takes the secrets given by environment: they are validated (a bad one names its variable),
   * marked managed, and stored when they differ from what is stored (one vendor.secret_set event;
   * replicas starting with the same value compare under the write's turn, so none records another).
   */
  async adoptEnvironment(secrets: Partial<Record<VendorName, VendorSecret>>, now = Date.now()): Promise<void> {
    for (const [vendor, secret] of Object.entries(secrets) as [VendorName, VendorSecret | undefined][]) {
      if (!secret) continue;
      const parsed = SecretInput[vendor].safeParse(secret);
      if (!parsed.success) {
        const issue = parsed.error.issues[0]!;
        const variable = SECRET_VARIABLES[vendor][String(issue.path[0])] ?? vendor;
        throw new Error(`${variable}: ${issue.message}`);
      }
      const same = (current: SecretField[]) =>
        current.length === ADAPTERS[vendor].secretFields.length && current.every((f) => this.box.open(f.ciphertext) === parsed.data[f.field]);
      await this.write(vendor, parsed.data, null, "environment", now, same);
      this.fromEnv[vendor] = parsed.data;
    }
  }

  isManagedByEnv(vendor: VendorName): boolean {
    return this.fromEnv[vendor] !== undefined;
  }

  /** Validates and stores a vendor's secret (all its fields at once), recording who did it (null: Keybrake itself). */
  async set(vendor: VendorName, input: unknown, actor: Actor | null = null, now = Date.now()): Promise<void> {
    if (this.isManagedByEnv(vendor)) {
      const variables = Object.values(SECRET_VARIABLES[vendor]).join(" and ");
      throw new ApiError("managed_by_env", `The ${vendor} secret is managed by the environment (${variables}); change it there and restart.`, { vendor, variables: Object.values(SECRET_VARIABLES[vendor]) });
    }
    const parsed = SecretInput[vendor].safeParse(input);
    if (!parsed.success) throw validationError(fieldIssues(parsed.error.issues));
    await this.write(vendor, parsed.data, actor, "api", now);
  }

  /** The secret and its event commit together; this process sees the new one at once. */
  private async write(vendor: VendorName, secret: Record<string, string>, actor: Actor | null, source: "api" | "environment", now: number, unchanged?: (current: SecretField[]) => boolean): Promise<void> {
    const fields = Object.entries(secret).map(([field, value]) => ({ field, ciphertext: this.box.seal(value), last4: value.slice(-4) }));
    const event: NewEvent = { type: "vendor.secret_set", actor, target: vendor, data: { vendor, source } };
    if (await this.store.write(vendor, fields, now, event, unchanged)) this.cache.delete(vendor);
  }

  /**
   * The decrypted secret, or null when the vendor is not (fully) configured; read on every proxied
   * call. A stored secret is re-read unless the last read is younger than the store's
   * reuseReadsForMs (0 on SQLite; on PostgreSQL a rotation made on another replica is used here
   * within that bound), and decrypted only when its ciphertexts changed.
   */
  async get(vendor: VendorName): Promise<VendorSecret | null> {
    const env = this.fromEnv[vendor];
    if (env) return env;
    const cached = this.cache.get(vendor);
    if (cached && Date.now() - cached.readAt < this.store.reuseReadsForMs) return cached.secret;
    return this.storedSecret(vendor);
  }

  private async storedSecret(vendor: VendorName): Promise<VendorSecret | null> {
    const readAt = Date.now();
    const rows = await this.store.fields(vendor);
    if (rows.length < ADAPTERS[vendor].secretFields.length) return null;
    const stamp = rows.map((r) => r.ciphertext).join("|");
    const cached = this.cache.get(vendor);
    if (cached?.stamp === stamp) {
      cached.readAt = readAt;
      return cached.secret;
    }
    const secret: Record<string, string> = {};
    for (const r of rows) secret[r.field] = this.box.open(r.ciphertext);
    this.cache.set(vendor, { stamp, secret, readAt });
    return secret;
  }

  async status(vendor: VendorName): Promise<VendorStatus> {
    const rows = await this.store.fields(vendor);
    const env = this.fromEnv[vendor];
    const fields: Record<string, { last4: string } | null> = {};
    for (const f of ADAPTERS[vendor].secretFields) {
      const r = rows.find((x) => x.field === f);
      const value = env?.[f];
      fields[f] = value !== undefined ? { last4: value.slice(-4) } : r ? { last4: r.last4 } : null;
    }
    const updated = rows.length ? Math.max(...rows.map((r) => r.updatedAt)) : null;
    return {
      vendor,
      configured: Object.values(fields).every(Boolean),
      managed_by_env: env !== undefined,
      fields,
      updated_at: updated === null ? null : new Date(updated).toISOString(),
    };
  }
}
