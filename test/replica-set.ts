/**
 * Keybrake replicas as a deployment runs them (SPEC §8): real `bun src/main.ts serve` processes
 * sharing one PostgreSQL database, each with its own data dir and otherwise the same environment
 * (database URL, master key, admin token, vendor secrets and base URLs), as compose or a
 * Deployment gives them. Used by test/pg-replicas.test.ts and test/pg-deploy.test.ts.
 */
import { rmSync } from "node:fs";
import type Stripe from "stripe";
import type { FakeVendor } from "./fake-vendor.ts";
import { ADMIN_TOKEN, apiCall, spawnKeybrake, tempDir, type Spawned } from "./helpers.ts";
import { stripeThrough, vendorEnv } from "./proxy-setup.ts";

export const REPLICA_MASTER_KEY = "kbm_replicas_master_key_0123456789abcdef012345";

export interface Replica extends Spawned {
  /** Management API call on this replica with the admin token. */
  api(method: string, path: string, body?: unknown): ReturnType<typeof apiCall>;
  /** SIGKILL (no grace: a delayed vendor call must not hold the test) and removes its data dir. */
  kill(): Promise<void>;
}

/** The environment every replica of one deployment gets. */
export function replicaEnv(databaseUrl: string, fake: FakeVendor, extra: Record<string, string> = {}): Record<string, string> {
  return { KEYBRAKE_DATABASE_URL: databaseUrl, KEYBRAKE_MASTER_KEY: REPLICA_MASTER_KEY, KEYBRAKE_ADMIN_TOKEN: ADMIN_TOKEN, KEYBRAKE_LOG: "silent", ...vendorEnv(fake), ...extra };
}

/** `count` replicas started at once on `env`, each on its own OS-assigned port and data dir. */
export function startReplicas(count: number, env: Record<string, string>): Promise<Replica[]> {
  return Promise.all(
    Array.from({ length: count }, async () => {
      const dataDir = tempDir("keybrake-replica-");
      const r = await spawnKeybrake({ ...env, KEYBRAKE_DATA_DIR: dataDir });
      return Object.assign(r, {
        api: (method: string, path: string, body?: unknown) => apiCall(r.url, method, path, body),
        async kill() {
          r.proc.kill("SIGKILL");
          await r.proc.exited;
          rmSync(dataDir, { recursive: true, force: true });
        },
      });
    }),
  );
}

/** One $1 PaymentIntent through the official stripe SDK (no retries): "ok", or the status and Keybrake's error code. */
export function charge(baseUrl: string, vaultKey: string): Promise<string> {
  return stripeThrough(baseUrl, vaultKey, { maxNetworkRetries: 0 })
    .paymentIntents.create({ amount: 100, currency: "usd" })
    .then(
      () => "ok",
      (e: Stripe.errors.StripeError) => `${e.statusCode} ${e.headers?.["x-keybrake-error"] ?? e.code}`,
    );
}
