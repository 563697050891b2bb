/**
 * Vendor secrets and the master key check on both backends: what VendorSecretStore
 * (src/domain/secrets.ts) promises, over the VendorSecretStorage of each backend. Several
 * services over one store stand for replicas; on PostgreSQL their concurrent calls run on
 * separate pooled connections.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { loadConfig } from "../src/config.ts";
import { SecretBox } from "../src/domain/crypto.ts";
import { MasterKeyMismatch, VendorSecretStore } from "../src/domain/secrets.ts";
import { createLogger } from "../src/log.ts";
import { createServices } from "../src/services.ts";
import { openStores, type Stores } from "../src/store/index.ts";
import { BACKENDS, openTestBackend } from "./backends.ts";
import { tempDir } from "./helpers.ts";

const KEY = "a".repeat(40);
const ADMIN = { tokenId: "tok_admin", name: "ops" };
const open = async (kind: (typeof BACKENDS)[number], name: string) => {
  const backend = await openTestBackend(kind, name);
  return { backend, stores: openStores(backend, { logger: createLogger("silent"), box: new SecretBox(KEY) }) };
};

describe.each(BACKENDS)("vendor secrets on %s", (kind) => {
  let backend: Awaited<ReturnType<typeof openTestBackend>>;
  let stores: Stores;
  const replica = (key = KEY) => new VendorSecretStore(stores.vendorSecrets, new SecretBox(key));
  const secretEvents = async () => (await stores.events.list({ type: "vendor.secret_set", limit: 100 })).rows.reverse();

  beforeAll(async () => {
    ({ backend, stores } = await open(kind, "secrets"));
    await replica().verifyMasterKey();
  });
  afterAll(() => backend.close());

  test("a secret is stored sealed, shown by its last 4 only, and its event names who set it", async () => {
    const secrets = replica();
    const value = "sk_test_stored_sealed_WXYZ";
    await secrets.set("stripe", { secret_key: value }, ADMIN, 5_000);
    expect(await secrets.get("stripe")).toEqual({ secret_key: value });
    expect(await secrets.status("stripe")).toEqual({ vendor: "stripe", configured: true, managed_by_env: false, fields: { secret_key: { last4: "WXYZ" } }, updated_at: new Date(5_000).toISOString() });
    expect(JSON.stringify(await stores.vendorSecrets.allCiphertexts())).not.toContain(value);
    expect((await secretEvents()).at(-1)).toMatchObject({ actor: ADMIN, target: "stripe", data: { vendor: "stripe", source: "api" } });
  });

  test("bad input is refused field by field and nothing is stored", async () => {
    const secrets = replica();
    const error = await secrets.set("twilio", { account_sid: "XX123", auth_token: "tok" }, ADMIN).catch((e) => e);
    expect(error).toMatchObject({ code: "invalid_request" });
    expect(error.details.map((d: { field: string }) => d.field).sort()).toEqual(["account_sid", "auth_token"]);
    expect(await secrets.get("twilio")).toBeNull();
    expect((await secrets.status("twilio")).configured).toBe(false);
  });

  test("replicas starting with the same environment secret record one event; a changed value records one more", async () => {
    const env = { resend: { api_key: "re_from_environment_1111" } };
    const before = (await secretEvents()).length;
    const replicas = Array.from({ length: 5 }, () => replica());
    await Promise.all(replicas.map((r) => r.adoptEnvironment(env, 6_000)));
    await replica().adoptEnvironment(env, 7_000);
    expect((await secretEvents()).slice(before)).toEqual([expect.objectContaining({ actor: null, target: "resend", data: { vendor: "resend", source: "environment" } })]);
    await replica().adoptEnvironment({ resend: { api_key: "re_from_environment_2222" } }, 8_000);
    expect((await secretEvents()).length).toBe(before + 2);
    // Managed by the environment: what the proxy uses, and refused to the API.
    expect(await replicas[0]!.get("resend")).toEqual(env.resend);
    expect(await replicas[0]!.set("resend", { api_key: "re_from_api_33333" }, ADMIN).catch((e) => e.code)).toBe("managed_by_env");
    expect(await replicas[0]!.status("resend")).toMatchObject({ managed_by_env: true, fields: { api_key: { last4: "1111" } } });
  });

  test("a rotation on one replica is used by every other within the store's stated bound", async () => {
    const [a, b] = [replica(), replica()];
    await a.set("stripe", { secret_key: "sk_test_before_rotation_1" });
    expect(await b.get("stripe")).toEqual({ secret_key: "sk_test_before_rotation_1" });
    await a.set("stripe", { secret_key: "sk_test_after_rotation_22" });
    expect(await a.get("stripe")).toEqual({ secret_key: "sk_test_after_rotation_22" });
    expect(stores.vendorSecrets.reuseReadsForMs).toBeLessThanOrEqual(1_000);
    await Bun.sleep(stores.vendorSecrets.reuseReadsForMs);
    expect(await b.get("stripe")).toEqual({ secret_key: "sk_test_after_rotation_22" });
  });
});

describe.each(BACKENDS)("the master key check on %s", (kind) => {
  test("of replicas meeting an empty store with different keys, one key wins and the others are refused; reset adopts a new key", async () => {
    const { backend, stores } = await open(kind, "masterkey");
    try {
      const keys = ["a", "b", "c", "d"].map((c) => c.repeat(40));
      const results = await Promise.allSettled(keys.map((k) => new VendorSecretStore(stores.vendorSecrets, new SecretBox(k)).verifyMasterKey()));
      const winners = keys.filter((_, i) => results[i]!.status === "fulfilled");
      expect(winners).toHaveLength(1);
      for (const r of results) if (r.status === "rejected") expect(r.reason).toEqual(new MasterKeyMismatch([]));
      const winner = new VendorSecretStore(stores.vendorSecrets, new SecretBox(winners[0]!));
      await winner.set("stripe", { secret_key: "sk_test_under_the_winner" });
      await winner.verifyMasterKey();
      const other = new VendorSecretStore(stores.vendorSecrets, new SecretBox(keys.find((k) => k !== winners[0])!));
      expect(await other.verifyMasterKey().catch((e) => e)).toEqual(new MasterKeyMismatch(["stripe"]));

      expect(await stores.vendorSecrets.reset()).toBe(1);
      await other.verifyMasterKey();
      expect(await winner.verifyMasterKey().catch((e) => e)).toBeInstanceOf(MasterKeyMismatch);
      expect(await other.get("stripe")).toBeNull();
    } finally {
      await backend.close();
    }
  });
});

test("on PostgreSQL a replica without KEYBRAKE_MASTER_KEY refuses to start, naming both variables (never the URL), before connecting", async () => {
  const config = { ...loadConfig({ KEYBRAKE_DATA_DIR: tempDir() }), databaseUrl: "postgres://kb:hunter2@db.invalid:5432/keybrake" };
  const error = await createServices(config).catch((e: Error) => e);
  expect(error).toBeInstanceOf(Error);
  const message = (error as Error).message;
  expect(message).toStartWith("KEYBRAKE_DATABASE_URL is set but KEYBRAKE_MASTER_KEY is not");
  expect(message).not.toContain("\n");
  expect(message).not.toContain("hunter2");
});
