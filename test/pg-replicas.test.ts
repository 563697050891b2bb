/**
 * The proxy path across replicas on PostgreSQL (SPEC §8), end to end: three real proxy processes
 * (test/pg-replica-server.ts: the real Forwarder and proxy routes on the PostgreSQL ledger), the
 * official stripe SDK as the client, and the fake vendor counting what it really executes.
 * Money executed ≤ money reserved ≤ cap, across replicas; a revocation, an Idempotency-Key and
 * a killed replica's held reservations are seen by the others.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawn, type Subprocess } from "bun";
import { join } from "node:path";
import Stripe from "stripe";
import { migratePostgres, openPostgres, type Pg } from "../src/db/pg.ts";
import { startFakeVendor, type FakeVendor } from "./fake-vendor.ts";
import { readSettled } from "./helpers.ts";
import { freshDatabase, postgresAvailable } from "./pg.ts";
import { proxied, stripeThrough } from "./proxy-setup.ts";

const USD = 1_000_000;
const SERVER = join(import.meta.dir, "pg-replica-server.ts");

let seq = 0;
/** A Stripe vault key row as KeyService writes it (only the key's SHA-256 is stored). */
async function insertKey(sql: Pg, dailyUsd: number): Promise<{ id: string; vaultKey: string }> {
  const id = `key_r${process.pid}_${++seq}`;
  const vaultKey = `vk_${id}_0123456789abcdef0123456789abcdef`;
  const hash = new Bun.CryptoHasher("sha256").update(vaultKey).digest("hex");
  await sql`INSERT INTO vault_keys (id, key_hash, key_hint, vendor, daily_cap_micros, allowed_endpoints, agent_run_label, expires_at, created_at)
            VALUES (${id}, ${hash}, ${vaultKey.slice(0, 10)}, 'stripe', ${dailyUsd * USD}, '["POST /v1/payment_intents"]', ${"replicas/" + id},
                    ${Date.now() + 3600_000}, ${Date.now()})`;
  return { id, vaultKey };
}

async function startReplica(pgUrl: string, fake: FakeVendor): Promise<{ url: string; proc: Subprocess<"ignore", "pipe", "inherit"> }> {
  const proc = spawn([process.execPath, SERVER, pgUrl, fake.url, fake.credentials.stripe], { stdout: "pipe", stderr: "inherit" });
  const reader = proc.stdout.getReader();
  let out = "";
  while (!out.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) throw new Error("replica exited before listening");
    out += new TextDecoder().decode(value);
  }
  reader.releaseLock();
  return { url: out.trim(), proc };
}

const client = (url: string, vaultKey: string) => stripeThrough(url, vaultKey, { maxNetworkRetries: 0 });
const charge = (s: Stripe, opts?: Stripe.RequestOptions) =>
  s.paymentIntents.create({ amount: 100, currency: "usd" }, opts).then(
    () => "ok",
    (e: Stripe.errors.StripeError) => `${e.statusCode} ${e.headers?.["x-keybrake-error"] ?? e.code}`,
  );

async function day(sql: Pg, keyId: string) {
  const [r] = await sql`SELECT spent_micros::float8 AS spent, reserved_micros::float8 AS reserved FROM key_spend_days WHERE key_id = ${keyId}`;
  return { spent: r?.spent ?? 0, reserved: r?.reserved ?? 0 };
}

describe.skipIf(!postgresAvailable())("three proxy replicas on one PostgreSQL ledger", () => {
  let fake: FakeVendor;
  let sql: Pg;
  let replicas: { url: string; proc: Subprocess<"ignore", "pipe", "inherit"> }[] = [];

  beforeAll(async () => {
    fake = await startFakeVendor();
    const url = await freshDatabase("replicas");
    sql = openPostgres(url);
    await migratePostgres(sql);
    replicas = await Promise.all([0, 1, 2].map(() => startReplica(url, fake)));
  });
  afterAll(async () => {
    for (const r of replicas) r.proc.kill("SIGKILL");
    await sql?.close();
    await fake?.stop();
  });

  test("300 concurrent charges through the stripe SDK over 3 replicas: exactly the cap reaches the vendor", async () => {
    const k = await insertKey(sql, 123);
    const results = await Promise.all(Array.from({ length: 300 }, (_, i) => charge(client(replicas[i % 3]!.url, k.vaultKey))));
    const tally: Record<string, number> = {};
    for (const r of results) tally[r] = (tally[r] ?? 0) + 1;
    expect(tally).toEqual({ ok: 123, "429 cap_exceeded": 177 });
    expect(fake.executed.filter((c) => c.path === "/v1/payment_intents").length).toBe(123);
    expect(await readSettled(() => day(sql, k.id), (d) => d.reserved === 0)).toEqual({ spent: 123 * USD, reserved: 0 });
  }, 60_000);

  test("a revocation is seen by the very next call on every replica", async () => {
    const k = await insertKey(sql, 10);
    expect(await Promise.all(replicas.map((r) => charge(client(r.url, k.vaultKey))))).toEqual(["ok", "ok", "ok"]);
    await sql`UPDATE vault_keys SET revoked_at = ${Date.now()} WHERE id = ${k.id}`; // what DELETE /vault/keys/{id} writes
    expect(await Promise.all(replicas.map((r) => charge(client(r.url, k.vaultKey))))).toEqual(["401 key_revoked", "401 key_revoked", "401 key_revoked"]);
  });

  test("an Idempotency-Key replayed on another replica is answered from the ledger, charged once", async () => {
    const k = await insertKey(sql, 10);
    const before = fake.executed.length;
    const send = (r: number) => proxied(replicas[r]!.url, k.vaultKey, "POST", "/v1/payment_intents", { amount: "100", currency: "usd" }, { "idempotency-key": "replica-idem-1" });
    const first = await send(0);
    const again = await send(1);
    expect([first.status, again.status]).toEqual([200, 200]);
    expect(again.json).toEqual(first.json);
    expect(again.headers.get("idempotent-replayed")).toBe("true");
    expect((await send(2)).headers.get("idempotent-replayed")).toBe("true");
    expect(fake.executed.length - before).toBe(1);
    expect(await day(sql, k.id)).toEqual({ spent: USD, reserved: 0 });
  });

  test("a replica SIGKILLed mid-fan-out leaves its reservations held; the others count them", async () => {
    const k = await insertKey(sql, 20);
    const victim = replicas[2]!;
    fake.setDefaultBehavior({ kind: "delay", ms: 60_000 });
    const received = fake.calls.length;
    const inFlight = Array.from({ length: 8 }, () => charge(client(victim.url, k.vaultKey)));
    // Every call has been reserved and forwarded once the vendor holds all 8 (a condition, not a timer).
    while (fake.calls.length - received < 8) await Bun.sleep(5);
    victim.proc.kill("SIGKILL");
    await victim.proc.exited;
    fake.setDefaultBehavior({ kind: "normal" });
    expect((await Promise.all(inFlight)).filter((r) => r === "ok")).toEqual([]); // the clients lost their connection
    expect(await day(sql, k.id)).toEqual({ spent: 0, reserved: 8 * USD });
    // $12 left: twelve $1 charges on the survivors pass, the thirteenth is refused.
    const rest = await Promise.all(Array.from({ length: 13 }, (_, i) => charge(client(replicas[i % 2]!.url, k.vaultKey))));
    expect(rest.filter((r) => r === "ok").length).toBe(12);
    expect(rest.filter((r) => r === "429 cap_exceeded").length).toBe(1);
  }, 60_000);
});
