import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { Resend } from "resend";
import twilio from "twilio";
import { seedKeyBody } from "./helpers.ts";
import { ledgerOf, startProxyStack } from "./proxy-setup.ts";

let stack: Awaited<ReturnType<typeof startProxyStack>>;
beforeAll(async () => {
  stack = await startProxyStack();
});
afterAll(() => stack.stop());
beforeEach(() => stack.fake.reset());

const SEND_SMS = "POST /2010-04-01/Accounts/*/Messages.json";
// twilio-node insists the user name looks like an Account SID; it need not be the real one.
const PLACEHOLDER_SID = "AC" + "0".repeat(32);

function twilioThrough(url: string, vaultKey: string) {
  const client = twilio(PLACEHOLDER_SID, vaultKey);
  client.api.baseUrl = `${url}/twilio`;
  return client;
}

describe("Twilio through Keybrake", () => {
  test("segments priced (GSM-7 and UCS-2), the real Account SID and token swapped in", async () => {
    const { kb, fake } = stack;
    const key = await kb.issueKey(seedKeyBody({ vendor: "twilio", daily_usd_cap: 1, allowed_endpoints: [SEND_SMS], agent_run_label: "temporal/sms" }));
    const client = twilioThrough(kb.url, key.vault_key);

    const short = await client.messages.create({ to: "+15005550006", from: "+15005550001", body: "Your invoice is ready." });
    expect(short.sid).toMatch(/^SM/);
    const long = await client.messages.create({ to: "+15005550006", from: "+15005550001", body: "😀".repeat(40) }); // 80 UCS-2 units → 2 segments
    expect(long.sid).toMatch(/^SM/);

    const rows = (await kb.api("GET", `/vault/audit?key_id=${key.key_id}`)).json.data;
    expect(rows.map((r: any) => r.settled_cost_usd)).toEqual([0.0166, 0.0083]);
    expect(rows[1].vendor_object_id).toBe(short.sid);
    expect(rows[1].vendor_request_id).toMatch(/^RQ/);
    expect(await ledgerOf(kb, key.key_id)).toMatchObject({ spent: 24_900, reserved: 0 });

    const call = fake.calls[0]!;
    expect(call.path).toBe(`/2010-04-01/Accounts/${fake.credentials.twilioSid}/Messages.json`);
    expect(call.headers.authorization).toBe("Basic " + btoa(`${fake.credentials.twilioSid}:${fake.credentials.twilioToken}`));
    expect(JSON.stringify(fake.calls)).not.toContain(key.vault_key);
  });

  test("MMS is priced per message; a price in the response settles the call", async () => {
    const { kb, fake } = stack;
    const key = await kb.issueKey(seedKeyBody({ vendor: "twilio", daily_usd_cap: 1, allowed_endpoints: [SEND_SMS] }));
    const client = twilioThrough(kb.url, key.vault_key);
    await client.messages.create({ to: "+15005550006", from: "+15005550001", body: "pic", mediaUrl: ["https://example.com/a.png"] });
    fake.twilioPrice = "-0.00790";
    await client.messages.create({ to: "+15005550006", from: "+15005550001", body: "hi" });
    const rows = (await kb.api("GET", `/vault/audit?key_id=${key.key_id}`)).json.data;
    expect(rows.map((r: any) => [r.estimated_cost_usd, r.settled_cost_usd])).toEqual([
      [0.0083, 0.0079],
      [0.02, 0.02],
    ]);
  });

  test("a cap hit is a RestException with status 429 and the cap-hit header", async () => {
    const { kb, fake } = stack;
    const key = await kb.issueKey(seedKeyBody({ vendor: "twilio", daily_usd_cap: 0.02, allowed_endpoints: [SEND_SMS] }));
    const client = twilioThrough(kb.url, key.vault_key);
    const sent = await Promise.allSettled(
      Array.from({ length: 10 }, () => client.messages.create({ to: "+15005550006", from: "+15005550001", body: "hello" })),
    );
    expect(sent.filter((r) => r.status === "fulfilled")).toHaveLength(2); // 2 × $0.0083 ≤ $0.02 < 3 × $0.0083
    expect(fake.executed).toHaveLength(2);
    const err = (sent.find((r) => r.status === "rejected") as PromiseRejectedResult).reason;
    expect(err).toBeInstanceOf(twilio.RestException);
    expect(err.status).toBe(429);
    expect(err.code).toBe(20429);
    expect(err.details).toEqual({ keybrake_error: "cap_exceeded" });
  });

  test("a Stripe vault key cannot send SMS", async () => {
    const { kb, fake } = stack;
    const key = await kb.issueKey(seedKeyBody());
    const err = await twilioThrough(kb.url, key.vault_key)
      .messages.create({ to: "+15005550006", from: "+15005550001", body: "x" })
      .catch((e) => e);
    expect(err.status).toBe(403);
    expect(fake.calls).toHaveLength(0);
  });
});

describe("Resend through Keybrake", () => {
  const resendThrough = (url: string, vaultKey: string) => new Resend(vaultKey, { baseUrl: `${url}/resend` });

  test("priced per recipient (to + cc + bcc), batch = the sum", async () => {
    const { kb, fake } = stack;
    const key = await kb.issueKey(
      seedKeyBody({ vendor: "resend", daily_usd_cap: 1, allowed_endpoints: ["POST /emails", "POST /emails/batch"], agent_run_label: "windmill/mail" }),
    );
    const resend = resendThrough(kb.url, key.vault_key);
    const one = await resend.emails.send({
      from: "billing@example.com",
      to: ["a@example.com", "b@example.com"],
      cc: "c@example.com",
      bcc: ["d@example.com"],
      subject: "Invoice",
      text: "Attached.",
    });
    expect(one.error).toBeNull();
    expect(one.data!.id).toBeString();
    const batch = await resend.batch.send([
      { from: "x@example.com", to: ["a@example.com"], subject: "1", text: "1" },
      { from: "x@example.com", to: ["b@example.com", "c@example.com"], subject: "2", text: "2" },
    ]);
    expect(batch.error).toBeNull();
    const rows = (await kb.api("GET", `/vault/audit?key_id=${key.key_id}`)).json.data;
    expect(rows.map((r: any) => r.settled_cost_usd)).toEqual([0.0027, 0.0036]);
    expect(rows[1].vendor_object_id).toBe(one.data!.id);
    expect(fake.calls[0]!.headers.authorization).toBe(`Bearer ${fake.credentials.resend}`);
    expect(await ledgerOf(kb, key.key_id)).toMatchObject({ spent: 6_300, reserved: 0 });
  });

  test("a cap hit comes back as resend's error object with statusCode 429", async () => {
    const { kb, fake } = stack;
    const key = await kb.issueKey(seedKeyBody({ vendor: "resend", daily_usd_cap: 0.001, allowed_endpoints: ["POST /emails"] }));
    const resend = resendThrough(kb.url, key.vault_key);
    const first = await resend.emails.send({ from: "x@example.com", to: "a@example.com", subject: "s", text: "t" });
    expect(first.error).toBeNull();
    const second = await resend.emails.send({ from: "x@example.com", to: "a@example.com", subject: "s", text: "t" });
    expect(second.error).toMatchObject({ statusCode: 429, name: "rate_limit_exceeded" });
    expect(second.headers?.["x-keybrake-cap-hit"]).toBe("true");
    expect(fake.executed).toHaveLength(1);
  });

  test("an unknown key is refused in resend's shape", async () => {
    const { kb, fake } = stack;
    const r = await resendThrough(kb.url, "vk_unknown").emails.send({ from: "x@example.com", to: "a@example.com", subject: "s", text: "t" });
    expect(r.error).toMatchObject({ statusCode: 401 });
    expect(fake.calls).toHaveLength(0);
  });
});
