import { eq, sql } from "drizzle-orm";
import type { NewEvent } from "../../domain/events.ts";
import type { SecretField, VendorSecretStorage } from "../../domain/secrets.ts";
import type { VendorName } from "../../vendors/types.ts";
import { ADVISORY_LOCK } from "../../db/pg.ts";
import { pgSchema, type PgOrm } from "../backend.ts";
import type { PgEventLog } from "./events.ts";

const { settings, vendorSecrets } = pgSchema;

const MASTER_KEY_CHECK = "master_key_check";
const field = { field: vendorSecrets.field, ciphertext: vendorSecrets.ciphertext, last4: vendorSecrets.last4, updatedAt: vendorSecrets.updatedAt };

/** Makes writes of vendor secrets take turns across replicas. */
const LOCK_SECRET_WRITES = sql`SELECT pg_advisory_xact_lock(${ADVISORY_LOCK.secretWrites})`;

/**
 * How long a replica's proxy reuses a read of a vendor secret: a rotation on one replica is used by
 * every other within 1 s, and the proxy's hot path pays no extra round trip to PostgreSQL for it.
 * (A secret being rotated away still works at the vendor for far longer than that.)
 */
export const PG_SECRET_REUSE_MS = 1_000;

/** Vendor secrets and the master key check in PostgreSQL, shared by every replica (all use one KEYBRAKE_MASTER_KEY). */
export class PgVendorSecretStore implements VendorSecretStorage {
  readonly reuseReadsForMs = PG_SECRET_REUSE_MS;

  constructor(
    private readonly orm: PgOrm,
    private readonly events: PgEventLog,
  ) {}

  fields(vendor: VendorName): Promise<SecretField[]> {
    return this.orm.select(field).from(vendorSecrets).where(eq(vendorSecrets.vendor, vendor));
  }

  async allCiphertexts() {
    return (await this.orm.select({ vendor: vendorSecrets.vendor, ciphertext: vendorSecrets.ciphertext }).from(vendorSecrets)) as { vendor: VendorName; ciphertext: string }[];
  }

  async masterKeyCheck(sealedCheck: string): Promise<string> {
    // ON CONFLICT DO NOTHING: of two replicas meeting an empty database together, the first key wins and the other is refused.
    await this.orm.insert(settings).values({ name: MASTER_KEY_CHECK, value: sealedCheck }).onConflictDoNothing();
    const [row] = await this.orm.select({ value: settings.value }).from(settings).where(eq(settings.name, MASTER_KEY_CHECK));
    return row!.value;
  }

  write(vendor: VendorName, fields: Omit<SecretField, "updatedAt">[], now: number, event: NewEvent, unchanged?: (current: SecretField[]) => boolean): Promise<boolean> {
    return this.orm.transaction(async (tx) => {
      // Exact across replicas: writers take turns on the lock (rows may not exist yet, so FOR UPDATE
      // could lock nothing), and under READ COMMITTED the comparison after it sees the last commit.
      await tx.execute(LOCK_SECRET_WRITES);
      if (unchanged?.(await tx.select(field).from(vendorSecrets).where(eq(vendorSecrets.vendor, vendor)))) return false;
      for (const f of fields) {
        await tx
          .insert(vendorSecrets)
          .values({ vendor, ...f, updatedAt: now })
          .onConflictDoUpdate({ target: [vendorSecrets.vendor, vendorSecrets.field], set: { ciphertext: f.ciphertext, last4: f.last4, updatedAt: now } });
      }
      await this.events.record(tx, event, now);
      return true;
    });
  }

  reset(): Promise<number> {
    return this.orm.transaction(async (tx) => {
      await tx.delete(settings).where(eq(settings.name, MASTER_KEY_CHECK));
      return (await tx.delete(vendorSecrets).returning({ vendor: vendorSecrets.vendor })).length;
    });
  }
}
