import { afterAll, beforeAll, expect, test } from "bun:test";
import { join } from "node:path";
import { Resend } from "resend";
import Stripe from "stripe";
import twilio from "twilio";
import { startFakeVendor, type FakeVendor } from "./fake-vendor.ts";
import { apiCall, spawnKeybrake, tempDir, type Spawned } from "./helpers.ts";
import { stripeThrough, vendorEnv } from "./proxy-setup.ts";

// The single executable, built here from this checkout and run from an empty directory with
// nothing beside it — as a user would — then driven by the official SDKs.
let fake: FakeVendor;
let kb: Spawned;
let token: string;

beforeAll(async () => {
  const dir = tempDir("keybrake-bin-");
  const build = Bun.spawnSync([process.execPath, "build", "src/main.ts", "--compile", "--outfile", join(dir, "keybrake")], {
    cwd: join(import.meta.dir, ".."),
    stderr: "pipe",
  });
  if (build.exitCode !== 0) throw new Error(build.stderr.toString());
  fake = await startFakeVendor();
  kb = await spawnKeybrake({ ...vendorEnv(fake), KEYBRAKE_DATA_DIR: join(dir, "data") }, [join(dir, "keybrake"), "serve"]);
  await Bun.sleep(100);
  token = /(kbt_[A-Za-z0-9_-]+)/.exec(kb.output())![1]!;
}, 60_000);
afterAll(async () => {
  await kb?.stop();
  await fake?.stop();
});

const issue = async (body: object) => (await apiCall(kb.url, "POST", "/vault/keys", body, token)).json;

test("stripe-node, twilio-node and resend-node work through dist/keybrake by changing only key and base URL", async () => {
  const s = await issue({ vendor: "stripe", daily_usd_cap: 50, allowed_endpoints: ["POST /v1/payment_intents"], expires_in: "1h", agent_run_label: "bin/stripe" });
  const stripe = stripeThrough(kb.url, s.vault_key);
  expect((await stripe.paymentIntents.create({ amount: 2900, currency: "usd" })).amount).toBe(2900);
  const err = await stripe.paymentIntents.create({ amount: 2900, currency: "usd" }).catch((e) => e);
  expect(err).toBeInstanceOf(Stripe.errors.StripeRateLimitError);

  const t = await issue({ vendor: "twilio", daily_usd_cap: 1, allowed_endpoints: ["POST /2010-04-01/Accounts/*/Messages.json"], expires_in: "1h", agent_run_label: "bin/twilio" });
  const client = twilio("AC" + "1".repeat(32), t.vault_key);
  client.api.baseUrl = `${kb.url}/twilio`;
  expect((await client.messages.create({ to: "+15005550006", from: "+15005550001", body: "hi" })).sid).toMatch(/^SM/);

  const r = await issue({ vendor: "resend", daily_usd_cap: 1, allowed_endpoints: ["POST /emails"], expires_in: "1h", agent_run_label: "bin/resend" });
  const sent = await new Resend(r.vault_key, { baseUrl: `${kb.url}/resend` }).emails.send({ from: "a@example.com", to: "b@example.com", subject: "s", text: "t" });
  expect(sent.error).toBeNull();

  expect(fake.executed).toHaveLength(3);
  const audit = (await apiCall(kb.url, "GET", "/vault/audit?label=bin/stripe", undefined, token)).json.data;
  expect(audit.map((a: any) => a.outcome)).toEqual(["cap_hit", "forwarded"]);
}, 30_000);

test("the binary serves its OpenAPI document and health without node_modules", async () => {
  expect((await fetch(kb.url + "/healthz")).status).toBe(200);
  expect((await (await fetch(kb.url + "/openapi.json")).json()).openapi).toBe("3.1.0");
});
