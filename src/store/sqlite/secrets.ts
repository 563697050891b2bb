import { eq, sql } from "drizzle-orm";
import type { Db } from "../../db/connection.ts";
import { settings, vendorSecrets } from "../../db/schema.ts";
import type { EventLog, NewEvent } from "../../domain/events.ts";
import type { SecretField, VendorSecretStorage } from "../../domain/secrets.ts";
import type { VendorName } from "../../vendors/types.ts";

const MASTER_KEY_CHECK = "master_key_check";
const field = { field: vendorSecrets.field, ciphertext: vendorSecrets.ciphertext, last4: vendorSecrets.last4, updatedAt: vendorSecrets.updatedAt };

/** Vendor secrets and the master key check in the SQLite file. */
export class SqliteVendorSecretStore implements VendorSecretStorage {
  // Every proxied call reads: a local indexed lookup, as cheap as a cache check, and never stale.
  readonly reuseReadsForMs = 0;
  private readonly byVendor;

  constructor(
    private readonly db: Db,
    private readonly events: EventLog,
  ) {
    this.byVendor = db.orm.select(field).from(vendorSecrets).where(eq(vendorSecrets.vendor, sql.placeholder("vendor"))).prepare();
  }

  async fields(vendor: VendorName): Promise<SecretField[]> {
    return this.byVendor.all({ vendor });
  }

  async allCiphertexts() {
    return this.db.orm.select({ vendor: vendorSecrets.vendor, ciphertext: vendorSecrets.ciphertext }).from(vendorSecrets).all() as { vendor: VendorName; ciphertext: string }[];
  }

  async masterKeyCheck(sealedCheck: string): Promise<string> {
    // INSERT OR IGNORE: of two processes meeting a new data dir together, the first key wins and the other is refused.
    this.db.orm.insert(settings).values({ name: MASTER_KEY_CHECK, value: sealedCheck }).onConflictDoNothing().run();
    return this.db.orm.select({ value: settings.value }).from(settings).where(eq(settings.name, MASTER_KEY_CHECK)).get()!.value;
  }

  async write(vendor: VendorName, fields: Omit<SecretField, "updatedAt">[], now: number, event: NewEvent, unchanged?: (current: SecretField[]) => boolean): Promise<boolean> {
    // IMMEDIATE: the comparison and the write happen under the write lock, so processes take turns.
    return this.db.sqlite
      .transaction(() => {
        if (unchanged?.(this.byVendor.all({ vendor }))) return false;
        for (const f of fields) {
          this.db.orm
            .insert(vendorSecrets)
            .values({ vendor, ...f, updatedAt: now })
            .onConflictDoUpdate({ target: [vendorSecrets.vendor, vendorSecrets.field], set: { ciphertext: f.ciphertext, last4: f.last4, updatedAt: now } })
            .run();
        }
        this.events.record(event, now);
        return true;
      })
      .immediate();
  }

  async reset(): Promise<number> {
    return this.db.sqlite
      .transaction(() => {
        this.db.orm.delete(settings).where(eq(settings.name, MASTER_KEY_CHECK)).run();
        return this.db.orm.delete(vendorSecrets).returning({ vendor: vendorSecrets.vendor }).all().length;
      })
      .immediate();
  }
}
