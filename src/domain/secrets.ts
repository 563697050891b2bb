import type { Database, Statement } from "bun:sqlite";
import { z } from "zod";
import { fieldIssues, validationError } from "../errors.ts";
import { ADAPTERS } from "../vendors/index.ts";
import type { VendorName, VendorSecret } from "../vendors/types.ts";
import type { SecretBox } from "./crypto.ts";

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

export interface VendorStatus {
  vendor: VendorName;
  configured: boolean;
  fields: Record<string, { last4: string } | null>;
  updated_at: string | null;
}

export class VendorSecretStore {
  private readonly rows: Statement<{ field: string; ciphertext: string; last4: string; updated_at: number }, [string]>;
  private readonly cache = new Map<VendorName, { stamp: string; secret: VendorSecret }>();

  constructor(
    private readonly sqlite: Database,
    private readonly box: SecretBox,
  ) {
    this.rows = sqlite.prepare("SELECT field, ciphertext, last4, updated_at FROM vendor_secrets WHERE vendor = ?");
  }

  /** Validates and stores a vendor's secret (all its fields at once). */
  set(vendor: VendorName, input: unknown, now = Date.now()): void {
    const parsed = SecretInput[vendor].safeParse(input);
    if (!parsed.success) throw validationError(fieldIssues(parsed.error.issues));
    const upsert = this.sqlite.prepare(
      `INSERT INTO vendor_secrets (vendor, field, ciphertext, last4, updated_at) VALUES (?, ?, ?, ?, ?)
       ON CONFLICT (vendor, field) DO UPDATE SET ciphertext = excluded.ciphertext, last4 = excluded.last4, updated_at = excluded.updated_at`,
    );
    this.sqlite.transaction(() => {
      for (const [field, value] of Object.entries(parsed.data)) {
        upsert.run(vendor, field, this.box.seal(value), value.slice(-4), now);
      }
    })();
  }

  /** The decrypted secret, or null when the vendor is not (fully) configured. Re-read each call so rotation is seen by every process. */
  get(vendor: VendorName): VendorSecret | null {
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
    const fields: Record<string, { last4: string } | null> = {};
    for (const f of ADAPTERS[vendor].secretFields) {
      const r = rows.find((x) => x.field === f);
      fields[f] = r ? { last4: r.last4 } : null;
    }
    const updated = rows.length ? Math.max(...rows.map((r) => r.updated_at)) : null;
    return {
      vendor,
      configured: Object.values(fields).every(Boolean),
      fields,
      updated_at: updated === null ? null : new Date(updated).toISOString(),
    };
  }
}
