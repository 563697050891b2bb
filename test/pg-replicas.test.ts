/**
 * Replicas on one PostgreSQL database (SPEC §8), end to end: real `keybrake serve` processes
 * (test/replica-set.ts) with the same environment, keys managed through their APIs, the official
 * stripe SDK as the client, and the fake vendor counting what it really executes. Money executed
 * ≤ money reserved ≤ cap across replicas; a revocation, a cap change, an Idempotency-Key and a
 * killed replica's held reservations are seen by the others; a lost database refuses money, and
 * comes back without restarting anyone.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { startFakeVendor, type FakeVendor } from "./fake-vendor.ts";
import { readSettled, seedKeyBody } from "./helpers.ts";
import { freshDatabase, postgresAvailable, startCluster, type PgCluster } from "./pg.ts";
import { proxied, stripeThrough } from "./proxy-setup.ts";
import { charge as chargeAt, replicaEnv, startReplicas, type Replica } from "./replica-set.ts";

const USD = 1_000_000;

/** One $1 PaymentIntent through the stripe SDK on replica `r`. */
const charge = (r: Replica, vaultKey: string) => chargeAt(r.url, vaultKey);

let seq = 0;
async function issue(r: Replica, dailyUsd: number): Promise<{ key_id: string; vault_key: string }> {
  const res = await r.api("POST", "/vault/keys", seedKeyBody({ daily_usd_cap: dailyUsd, agent_run_label: `replicas/${process.pid}-${++seq}` }));
  expect(res.status).toBe(201);
  return res.json;
}

/** What a replica's management API reports of a key's day. */
async function spendOn(r: Replica, keyId: string) {
  const { json } = await r.api("GET", `/vault/keys/${keyId}`);
  return { spent: json.spent_today_usd, reserved: json.reserved_usd, remaining: json.remaining_today_usd };
}
/** Once every settlement is in (they commit just after their answers, maybe on another replica); `held` stays reserved. */
const settledOn = (r: Replica, keyId: string, held = 0) => readSettled(() => spendOn(r, keyId), (v) => v.reserved === held);

describe.skipIf(!postgresAvailable())("three keybrake replicas on one PostgreSQL database", () => {
  let fake: FakeVendor;
  let replicas: Replica[] = [];

  beforeAll(async () => {
    fake = await startFakeVendor();
    replicas = await startReplicas(3, replicaEnv(await freshDatabase("replicas"), fake));
  }, 30_000);
  afterAll(async () => {
    await Promise.all(replicas.map((r) => r.kill()));
    await fake?.stop();
  });

  test("300 concurrent charges through the stripe SDK over 3 replicas: exactly the cap reaches the vendor", async () => {
    fake.reset(); // what the fake executed and moved is this test's alone
    const k = await issue(replicas[0]!, 123);
    const results = await Promise.all(Array.from({ length: 300 }, (_, i) => charge(replicas[i % 3]!, k.vault_key)));
    const tally: Record<string, number> = {};
    for (const r of results) tally[r] = (tally[r] ?? 0) + 1;
    expect(tally).toEqual({ ok: 123, "429 cap_exceeded": 177 });
    expect(fake.executed.filter((c) => c.path === "/v1/payment_intents").length).toBe(123);
    const views = await Promise.all(replicas.map((r) => settledOn(r, k.key_id)));
    // executed ≤ reserved ≤ cap, then exact: every replica reports the same settled day.
    expect(fake.movedUsdMicros()).toBeLessThanOrEqual((views[0]!.spent + views[0]!.reserved) * USD);
    expect(views[0]!.spent + views[0]!.reserved).toBeLessThanOrEqual(123);
    expect(views).toEqual(Array(3).fill({ spent: 123, reserved: 0, remaining: 0 }));
  }, 30_000);

  test("a revocation through replica A's API: the very next call on B and C is refused", async () => {
    const [a, b, c] = replicas as [Replica, Replica, Replica];
    const k = await issue(b, 10);
    expect(await Promise.all(replicas.map((r) => charge(r, k.vault_key)))).toEqual(["ok", "ok", "ok"]);
    expect((await a.api("DELETE", `/vault/keys/${k.key_id}`)).status).toBe(200);
    expect([await charge(b, k.vault_key), await charge(c, k.vault_key)]).toEqual(["401 key_revoked", "401 key_revoked"]);
    expect((await c.api("GET", `/vault/keys/${k.key_id}`)).json.status).toBe("revoked");
  });

  test("a cap raised through replica A's API is used by the next call on C", async () => {
    const [a, b, c] = replicas as [Replica, Replica, Replica];
    const k = await issue(b, 2);
    expect([await charge(c, k.vault_key), await charge(c, k.vault_key), await charge(c, k.vault_key)]).toEqual(["ok", "ok", "429 cap_exceeded"]);
    expect((await a.api("PATCH", `/vault/keys/${k.key_id}`, { daily_usd_cap: 3 })).status).toBe(200);
    expect([await charge(c, k.vault_key), await charge(b, k.vault_key)]).toEqual(["ok", "429 cap_exceeded"]);
  });

  test("an Idempotency-Key replayed on another replica is answered from the ledger, charged once", async () => {
    const k = await issue(replicas[0]!, 10);
    const before = fake.executed.length;
    const sdk = (r: number) => stripeThrough(replicas[r]!.url, k.vault_key, { maxNetworkRetries: 0 }).paymentIntents.create({ amount: 100, currency: "usd" }, { idempotencyKey: "replica-idem-1" });
    const first = await sdk(0);
    expect((await sdk(1)).id).toBe(first.id);
    // The SDK hides response headers: the replay's marker is read on a raw call to the third replica.
    const raw = await proxied(replicas[2]!.url, k.vault_key, "POST", "/v1/payment_intents", { amount: "100", currency: "usd" }, { "idempotency-key": "replica-idem-1" });
    expect([raw.status, raw.json.id, raw.headers.get("idempotent-replayed")]).toEqual([200, first.id, "true"]);
    expect(fake.executed.length - before).toBe(1);
    expect(await settledOn(replicas[2]!, k.key_id)).toEqual({ spent: 1, reserved: 0, remaining: 9 });
  });

  // Last: it kills replica C.
  test("a replica SIGKILLed mid-fan-out leaves its reservations held; the others count them", async () => {
    const [a, b, victim] = replicas as [Replica, Replica, Replica];
    const k = await issue(a, 20);
    fake.setDefaultBehavior({ kind: "delay", ms: 60_000 });
    const received = fake.calls.length;
    const inFlight = Array.from({ length: 8 }, () => charge(victim, k.vault_key));
    // Every call has been reserved and forwarded once the vendor holds all 8 (a condition, not a timer).
    while (fake.calls.length - received < 8) await Bun.sleep(5);
    victim.proc.kill("SIGKILL");
    await victim.proc.exited;
    fake.setDefaultBehavior({ kind: "normal" });
    expect((await Promise.all(inFlight)).filter((r) => r === "ok")).toEqual([]); // the clients lost their connection
    expect(await spendOn(b, k.key_id)).toEqual({ spent: 0, reserved: 8, remaining: 12 });
    // $12 left: twelve $1 charges on the survivors pass, the thirteenth is refused.
    const rest = await Promise.all(Array.from({ length: 13 }, (_, i) => charge(replicas[i % 2]!, k.vault_key)));
    expect(rest.filter((r) => r === "ok").length).toBe(12);
    expect(rest.filter((r) => r === "429 cap_exceeded").length).toBe(1);
    expect(await settledOn(a, k.key_id, 8)).toEqual({ spent: 12, reserved: 8, remaining: 0 });
  }, 30_000);
});

describe.skipIf(!postgresAvailable())("PostgreSQL stopped and restarted under two replicas", () => {
  let cluster: PgCluster;
  let fake: FakeVendor;
  let replicas: Replica[] = [];

  beforeAll(async () => {
    cluster = await startCluster(); // its own cluster: stopping it must not disturb the other files
    fake = await startFakeVendor();
    replicas = await startReplicas(2, replicaEnv(cluster.createDatabase("flaky"), fake));
  }, 30_000);
  afterAll(async () => {
    await Promise.all(replicas.map((r) => r.kill()));
    await fake?.stop();
    cluster?.destroy();
  });

  test("while down: 503 in Stripe's shape, nothing forwarded, /healthz 503; after a restart both recover by themselves", async () => {
    const k = await issue(replicas[0]!, 10);
    expect(await Promise.all(replicas.map((r) => charge(r, k.vault_key)))).toEqual(["ok", "ok"]);
    await Promise.all(replicas.map((r) => settledOn(r, k.key_id)));

    cluster.stop();
    const forwarded = fake.calls.length;
    for (const r of replicas) {
      const res = await proxied(r.url, k.vault_key, "POST", "/v1/payment_intents", { amount: "100", currency: "usd" });
      expect({ status: res.status, error: res.headers.get("x-keybrake-error"), type: res.json.error?.type }).toEqual({ status: 503, error: "unavailable", type: "api_error" });
      expect(await charge(r, k.vault_key)).toBe("503 unavailable"); // the SDK raises its usual StripeAPIError
      const health = await fetch(r.url + "/healthz");
      expect([health.status, ((await health.json()) as any).ledger]).toEqual([503, { backend: "postgres", reachable: false }]);
    }
    expect(fake.calls.length).toBe(forwarded);

    cluster.start();
    // Nobody restarts the replicas: each pool drops its dead connections and opens new ones.
    for (const r of replicas) {
      expect((await readSettled(() => fetch(r.url + "/healthz").then((h) => h.status), (s) => s === 200)) as number).toBe(200);
      expect(await charge(r, k.vault_key)).toBe("ok");
    }
    expect(await settledOn(replicas[1]!, k.key_id)).toEqual({ spent: 4, reserved: 0, remaining: 6 });
  }, 30_000);
});
