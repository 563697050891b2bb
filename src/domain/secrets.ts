import type { Database, Statement } from "bun:sqlite";
import { z } from "zod";
import { ApiError, fieldIssues, validationError } from "../errors.ts";
import { ADAPTERS } from "../vendors/index.ts";
import type { VendorName, VendorSecret } from "../vendors/types.ts";
import type { SecretBox } from "./crypto.ts";
import type { Actor, EventLog } from "./events.ts";

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

/**
 * A vendor whose secret is given by environment variables is *managed by the environment*: that
 * value is what the proxy uses, and nothing else can change it, so a restart can never bring back a
 * secret that was rotated away. Its value is also written (encrypted) to the store at start, so
 * that removing the variables later leaves the last secret in use rather than an older one.
 */
export class VendorSecretStore {
  private readonly rows: Statement<{ field: string; ciphertext: string; last4: string; updated_at: number }, [string]>;
  private readonly upsert: Statement;
  private readonly cache = new Map<VendorName, { stamp: string; secret: VendorSecret }>();
  private readonly fromEnv: Partial<Record<VendorName, VendorSecret>> = {};

  constructor(
    private readonly sqlite: Database,
    private readonly box: SecretBox,
    private readonly events: EventLog,
  ) {
    this.rows = sqlite.prepare("SELECT field, ciphertext, last4, updated_at FROM vendor_secrets WHERE vendor = ?");
    this.upsert = sqlite.prepare(
      `INSERT INTO vendor_secrets (vendor, field, ciphertext, last4, updated_at) VALUES (?, ?, ?, ?, ?)
       ON CONFLICT (vendor, field) DO UPDATE SET ciphertext = excluded.ciphertext, last4 = excluded.last4, updated_at = excluded.updated_at`,
    );
  }

  /**
   * Throws MasterKeyMismatch unless every stored secret decrypts and the data dir's check value
   * (sealed under the first key it met) opens: a wrong key is refused at start, not at call time.
   */
  verifyMasterKey(): void {
    const rows = this.sqlite.query<{ vendor: VendorName; ciphertext: string }, []>("SELECT vendor, ciphertext FROM vendor_secrets").all();
    const bad = [...new Set(rows.filter((r) => !this.box.canOpen(r.ciphertext)).map((r) => r.vendor))];
    if (bad.length) throw new MasterKeyMismatch(bad);
    // INSERT OR IGNORE: of two processes meeting a new data dir together, the first key wins and the other is refused.
    this.sqlite.query("INSERT OR IGNORE INTO settings (name, value) VALUES ('master_key_check', ?)").run(this.box.seal(MASTER_KEY_CHECK));
    const check = this.sqlite.query<{ value: string }, []>("SELECT value FROM settings WHERE name = 'master_key_check'").get()!;
    if (!this.box.canOpen(check.value)) throw new MasterKeyMismatch([]);
  }

  /** After a lost master key: forgets every stored secret and the key check, so the next start adopts the key in use. */
  static reset(sqlite: Database): number {
    return sqlite.transaction(() => {
      sqlite.query("DELETE FROM settings WHERE name = 'master_key_check'").run();
      return sqlite.query("DELETE FROM vendor_secrets").run().changes;
    })();
  }

  /**
   * Takes the secrets given by environment: they are validated (a bad one names its variable),
   * marked managed, and stored when they differ from what is stored (one vendor.secret_set event).
   */
  adoptEnvironment(secrets: Partial<Record<VendorName, VendorSecret>>, now = Date.now()): void {
    for (const [vendor, secret] of Object.entries(secrets) as [VendorName, VendorSecret | undefined][]) {
      if (!secret) continue;
      const parsed = SecretInput[vendor].safeParse(secret);
      if (!parsed.success) {
        const issue = parsed.error.issues[0]!;
        const variable = SECRET_VARIABLES[vendor][String(issue.path[0])] ?? vendor;
        throw new Error(`${variable}: ${issue.message}`);
      }
      const stored = this.storedSecret(vendor);
      if (!stored || Object.entries(parsed.data).some(([f, v]) => stored[f] !== v)) {
        this.sqlite.transaction(() => this.write(vendor, parsed.data, null, "environment", now))();
      }
      this.fromEnv[vendor] = parsed.data;
    }
  }

  isManagedByEnv(vendor: VendorName): boolean {
    return this.fromEnv[vendor] !== undefined;
  }

  /** Validates and stores a vendor's secret (all its fields at once), recording who did it (null: Keybrake itself). */
  set(vendor: VendorName, input: unknown, actor: Actor | null = null, now = Date.now()): void {
    if (this.isManagedByEnv(vendor)) {
      const variables = Object.values(SECRET_VARIABLES[vendor]).join(" and ");
      throw new ApiError("managed_by_env", `The ${vendor} secret is managed by the environment (${variables}); change it there and restart.`, { vendor, variables: Object.values(SECRET_VARIABLES[vendor]) });
    }
    const parsed = SecretInput[vendor].safeParse(input);
    if (!parsed.success) throw validationError(fieldIssues(parsed.error.issues));
    this.sqlite.transaction(() => this.write(vendor, parsed.data, actor, "api", now))();
  }

  /** Runs inside the caller's transaction: the secret and its event commit together. */
  private write(vendor: VendorName, secret: Record<string, string>, actor: Actor | null, source: "api" | "environment", now: number): void {
    for (const [field, value] of Object.entries(secret)) {
      this.upsert.run(vendor, field, this.box.seal(value), value.slice(-4), now);
    }
    this.events.record({ type: "vendor.secret_set", actor, target: vendor, data: { vendor, source } }, now);
  }

  /** The decrypted secret, or null when the vendor is not (fully) configured. Re-read each call so rotation is seen by every process. */
  get(vendor: VendorName): VendorSecret | null {
    return this.fromEnv[vendor] ?? this.storedSecret(vendor);
  }

  private storedSecret(vendor: VendorName): VendorSecret | null {
    const rows = this.rows.all(vendor);
    const fields = ADAPTERS[vendor].secretFields;
    if (rows.length < fields.length) return null;
    const stamp = rows.map((r) => r.ciphertext).join("|");
    const cached = this.cache.get(vendor);
    if (cached?.stamp === stamp) return cached.secret;
    const secret: Record<string, string> = {};
    for (const r of rows) secret[r.field] = this.box.open(r.ciphertext);
    this.cache.set(vendor, { stamp, secret });
    return secret;
  }

  status(vendor: VendorName): VendorStatus {
    const rows = this.rows.all(vendor);
    const env = this.fromEnv[vendor];
    const fields: Record<string, { last4: string } | null> = {};
    for (const f of ADAPTERS[vendor].secretFields) {
      const r = rows.find((x) => x.field === f);
      const value = env?.[f];
      fields[f] = value !== undefined ? { last4: value.slice(-4) } : r ? { last4: r.last4 } : null;
    }
    const updated = rows.length ? Math.max(...rows.map((r) => r.updated_at)) : null;
    return {
      vendor,
      configured: Object.values(fields).every(Boolean),
      managed_by_env: env !== undefined,
      fields,
      updated_at: updated === null ? null : new Date(updated).toISOString(),
    };
  }
}
