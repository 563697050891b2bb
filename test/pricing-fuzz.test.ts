/**
 * Generated request shapes against the cap (issue 10): thousands of variants of priced
 * calls — repeated keys, whitespace, brackets, case, percent-encoding, separators,
 * content types, encodings, query strings, headers — sent one after another through
 * Keybrake to the fake vendor, which parses them the permissive way the vendors do
 * (Rack for Stripe) and reports the money it moved. For EVERY variant Keybrake lets
 * through, the money the fake moved for it must be ≤ what Keybrake reserved for it;
 * a refusal must move nothing; and at the end the cap holds.
 *
 * Seeded: the seed is printed; KEYBRAKE_FUZZ_SEED=<n> replays a run, KEYBRAKE_FUZZ_N
 * sets the number of variants (default 3000).
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { seedKeyBody } from "./helpers.ts";
import { ledgerOf, startProxyStack } from "./proxy-setup.ts";

const SEED = Number(process.env.KEYBRAKE_FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31));
const N = Number(process.env.KEYBRAKE_FUZZ_N ?? 3000);
const CAP_USD = 250_000;

/** mulberry32: small, fast, and the same sequence for the same seed everywhere. */
function prng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    next,
    int: (n: number) => Math.floor(next() * n),
    pick: <T>(xs: readonly T[]): T => xs[Math.floor(next() * xs.length)]!,
    chance: (p: number) => next() < p,
  };
}
type Rng = ReturnType<typeof prng>;

interface Variant {
  vendor: "stripe" | "twilio" | "resend";
  method: string;
  path: string;
  query: string;
  headers: Record<string, string>;
  body: string;
  mutations: string[];
}

const CURRENCIES = ["usd", "USD", "eur", "jpy", "kwd", "idr", "gbp", "vnd", "bhd", "Usd"];
const pct = (s: string) => [...s].map((c) => "%" + c.charCodeAt(0).toString(16).padStart(2, "0")).join("");

/** One form-body mutation: each is a way some parser could read a body differently. */
const FORM_MUTATIONS: [string, (pairs: string[], r: Rng, key: string, big: string) => string[]][] = [
  ["repeat-key-last", (p, r, k, big) => [...p, `${k}=${big}`]],
  ["repeat-key-first", (p, r, k, big) => [`${k}=${big}`, ...p]],
  ["space-after-amp", (p) => p.map((x, i) => (i > 0 ? " " + x : x))],
  ["bracket-wrap", (p, r, k, big) => [...p, `[${k}]=${big}`]],
  ["bracket-trailing", (p, r, k, big) => [...p, `${k}]=${big}`]],
  ["bracket-array", (p, r, k, big) => [...p, `${k}[]=${big}`]],
  ["bracket-hash", (p, r, k, big) => [...p, `${k}[x]=${big}`]],
  ["bracket-open", (p, r, k, big) => [...p, `${k}[=${big}`]],
  ["case-key", (p, r, k, big) => [...p, `${k[0]!.toUpperCase()}${k.slice(1)}=${big}`]],
  ["pct-key", (p, r, k, big) => [...p, `${pct(k)}=${big}`]],
  ["pct-key-partial", (p, r, k, big) => [...p, `${pct(k[0]!)}${k.slice(1)}=${big}`]],
  ["pct-value", (p) => p.map((x) => x.replace(/=(\d+)$/, (_, d: string) => "=" + pct(d)))],
  ["plus-value", (p) => p.map((x) => x.replace(/=(\d+)$/, "=+$1"))],
  ["semicolon", (p, r, k, big) => [p.join("&") + `;${k}=${big}`]],
  ["empty-pair", (p) => [...p, ""]],
  ["no-equals", (p, r, k) => [...p, k]],
  ["nul-in-key", (p, r, k, big) => [...p, `${k}%00=${big}`]],
  ["utf8-bad", (p, r, k) => [...p, `${k}=%ff`]],
  ["tab-value", (p, r, k, big) => [...p, `${k}=%09${big}`]],
  ["pct-separator", (p, r, k, big) => [p.join("%26") + `&${k}=${big}`]],
];

const CONTENT_TYPES = [
  "application/x-www-form-urlencoded",
  "application/x-www-form-urlencoded; charset=utf-8",
  "APPLICATION/X-WWW-FORM-URLENCODED",
  "application/json",
  "text/plain",
  "multipart/form-data; boundary=x",
  "application/x-www-form-urlencoded; charset=latin1",
  "",
];

function formVariant(r: Rng, base: string[], keys: string[], big: () => string): { body: string; mutations: string[] } {
  let pairs = base;
  const mutations: string[] = [];
  const count = r.pick([0, 0, 1, 1, 1, 2, 3]);
  for (let i = 0; i < count; i++) {
    const [name, f] = r.pick(FORM_MUTATIONS);
    const key = r.pick(keys);
    pairs = f(pairs, r, key, big());
    mutations.push(`${name}(${key})`);
  }
  return { body: pairs.join("&"), mutations };
}

function headerVariant(r: Rng, v: Variant, formType: string) {
  if (r.chance(0.85)) v.headers["content-type"] = formType;
  else {
    v.headers["content-type"] = r.pick(CONTENT_TYPES);
    v.mutations.push(`content-type(${v.headers["content-type"]})`);
  }
  if (r.chance(0.05)) {
    v.headers["content-encoding"] = r.pick(["gzip", "identity", "br", "IDENTITY"]);
    v.mutations.push(`encoding(${v.headers["content-encoding"]})`);
  }
  if (r.chance(0.05)) {
    v.headers.connection = r.pick(["close", "keep-alive", "close, idempotency-key", "content-type", "keep-alive, content-length"]);
    v.mutations.push(`connection(${v.headers.connection})`);
  }
  if (r.chance(0.05)) {
    v.query = r.pick(["?amount=9999999", "?currency=usd", "?", "?expand[]=x"]);
    v.mutations.push(`query(${v.query})`);
  }
}

function stripeVariant(r: Rng, objects: string[]): Variant {
  const amount = String(r.pick([1, 50, 100, 999, 2900, 10_000, 123_456]));
  const big = () => String(r.pick([100_000, 1_000_000, 99_999_999]));
  const currency = r.pick(CURRENCIES);
  const onObject = objects.length > 0 && r.chance(0.3);
  let path = r.pick(["/v1/payment_intents", "/v1/payment_intents", "/v1/charges", "/v1/transfers"]);
  let base = [`amount=${amount}`, `currency=${currency}`];
  const keys = ["amount", "currency"];
  if (path === "/v1/payment_intents" && r.chance(0.3)) base.push("confirm=true");
  if (path === "/v1/charges") base.push("source=tok_visa");
  if (onObject) {
    const id = r.pick(objects);
    const step = r.pick(["", "/confirm", "/capture", "refund"]);
    if (step === "refund") {
      path = "/v1/refunds";
      base = [`payment_intent=${id}`, ...(r.chance(0.5) ? [`amount=${amount}`] : [])];
      keys.push("payment_intent");
    } else {
      path = `/v1/payment_intents/${id}${step}`;
      base = step === "" ? (r.chance(0.5) ? [`currency=${r.pick(CURRENCIES)}`] : [`amount=${big()}`]) : [];
    }
  }
  if (r.chance(0.2)) base.push(`metadata[run]=${r.int(1000)}`);
  const { body, mutations } = formVariant(r, base, keys, () => (r.chance(0.5) ? big() : r.pick(["usd", "kwd", "bhd"])));
  const v: Variant = { vendor: "stripe", method: "POST", path, query: "", headers: {}, body, mutations };
  headerVariant(r, v, "application/x-www-form-urlencoded");
  return v;
}

function twilioVariant(r: Rng): Variant {
  const to = r.pick(["+15005550006", "+447700900123", "+18765550123", "+37120000000", "+882100000000"]);
  const bodyText = r.pick(["hi", "x".repeat(200), "😀".repeat(40), "€".repeat(90)]);
  const base = [`To=${encodeURIComponent(to)}`, "From=%2B15005550001", `Body=${encodeURIComponent(bodyText)}`];
  const { body, mutations } = formVariant(r, base, ["To", "Body", "to", "body"], () =>
    r.pick([encodeURIComponent("+882100000000"), encodeURIComponent("😀".repeat(700)), encodeURIComponent("+37120000000")]),
  );
  const v: Variant = { vendor: "twilio", method: "POST", path: "/twilio/2010-04-01/Accounts/AC0/Messages.json", query: "", headers: {}, body, mutations };
  headerVariant(r, v, "application/x-www-form-urlencoded");
  return v;
}

function resendVariant(r: Rng): Variant {
  const many = Array.from({ length: 40 }, (_, i) => `u${i}@example.com`);
  const shapes: [string, string][] = [
    ["plain", `{"from":"a@x.test","to":"b@example.com","subject":"s","text":"t"}`],
    ["dup-to", `{"from":"a@x.test","to":"b@example.com","to":${JSON.stringify(many)},"subject":"s","text":"t"}`],
    ["case-to", `{"from":"a@x.test","to":"b@example.com","To":${JSON.stringify(many)},"subject":"s","text":"t"}`],
    ["comma-to", `{"from":"a@x.test","to":${JSON.stringify(many.join(","))},"subject":"s","text":"t"}`],
    ["bcc-list", `{"from":"a@x.test","to":"b@example.com","bcc":${JSON.stringify(many)},"subject":"s","text":"t"}`],
    ["nested-dup", `{"from":"a@x.test","to":"b@example.com","subject":"s","text":"t","headers":{"X":"1","x":"2"}}`],
    ["bom", `\ufeff{"from":"a@x.test","to":${JSON.stringify(many)},"subject":"s","text":"t"}`],
    ["escaped-key", `{"from":"a@x.test","\\u0074o":${JSON.stringify(many)},"to":"b@example.com","subject":"s","text":"t"}`],
  ];
  const [name, body] = r.pick(shapes);
  const v: Variant = { vendor: "resend", method: "POST", path: "/resend/emails", query: "", headers: {}, body, mutations: [name] };
  headerVariant(r, v, "application/json");
  return v;
}

let stack: Awaited<ReturnType<typeof startProxyStack>>;
beforeAll(async () => {
  stack = await startProxyStack();
});
afterAll(() => stack.stop());

test(`generated request shapes never move more money than Keybrake reserved (seed ${SEED}, ${N} variants)`, async () => {
  console.log(`pricing-fuzz: KEYBRAKE_FUZZ_SEED=${SEED} KEYBRAKE_FUZZ_N=${N}`);
  const { kb, fake } = stack;
  const r = prng(SEED);
  const keys = {
    stripe: await kb.issueKey(seedKeyBody({ daily_usd_cap: CAP_USD, allowed_endpoints: ["POST /v1/*", "POST /v1/payment_intents/*", "POST /v1/payment_intents/*/*"] })),
    twilio: await kb.issueKey(seedKeyBody({ vendor: "twilio", daily_usd_cap: 1_000, allowed_endpoints: ["POST /2010-04-01/Accounts/*/Messages.json"] })),
    resend: await kb.issueKey(seedKeyBody({ vendor: "resend", daily_usd_cap: 1_000, allowed_endpoints: ["POST /emails"] })),
  };
  const auth = {
    stripe: `Bearer ${keys.stripe.vault_key}`,
    twilio: "Basic " + btoa(`AC${"0".repeat(32)}:${keys.twilio.vault_key}`),
    resend: `Bearer ${keys.resend.vault_key}`,
  };
  const objects: string[] = [];
  const tally = { admitted: 0, refused: 0, vendorRefused: 0, capHit: 0 };
  const failures: string[] = [];
  let counted = 0;
  const byCode: Record<string, number> = {};

  for (let i = 0; i < N; i++) {
    const roll = r.next();
    const v = roll < 0.7 ? stripeVariant(r, objects) : roll < 0.85 ? twilioVariant(r) : resendVariant(r);
    const before = fake.movedUsdMicros();
    const res = await fetch(kb.url + v.path + v.query, { method: v.method, headers: { authorization: auth[v.vendor], ...v.headers }, body: v.body });
    const text = await res.text();
    const moved = fake.movedUsdMicros() - before;
    const cost = Math.round(Number(res.headers.get("x-keybrake-cost-usd") ?? 0) * 1e6);
    const refusedBy = res.headers.get("x-keybrake-error");
    if (refusedBy) {
      tally.refused++;
      byCode[refusedBy] = (byCode[refusedBy] ?? 0) + 1;
      if (refusedBy === "cap_exceeded") tally.capHit++;
    } else if (res.ok) tally.admitted++;
    else tally.vendorRefused++;
    if (res.ok && v.vendor === "stripe") {
      const id = (JSON.parse(text) as { id?: string }).id;
      if (id?.startsWith("pi_")) objects.push(id);
    }
    // Money can move after it was counted (a PaymentIntent counted at create moves at confirm), so the
    // invariant is cumulative: after every variant, all money moved so far ≤ all money counted so far.
    counted += cost;
    const bad = refusedBy ? moved > 0 : fake.movedUsdMicros() > counted;
    if (bad && failures.length < 5) {
      failures.push(`#${i} ${v.vendor} ${v.path}${v.query} [${v.mutations.join(", ")}] ${JSON.stringify(v.headers)} body=${JSON.stringify(v.body.slice(0, 200))} → ${res.status} cost=${cost} moved=${moved} total moved=${fake.movedUsdMicros()} counted=${counted}`);
    }
  }

  const fraction = tally.refused / N;
  console.log(`pricing-fuzz: ${N} variants; admitted ${tally.admitted}, refused by Keybrake ${tally.refused} (${(fraction * 100).toFixed(1)}%, of which cap hits ${tally.capHit}), refused by the vendor ${tally.vendorRefused}; refusals by code ${JSON.stringify(byCode)}`);
  if (failures.length) console.log("pricing-fuzz failures:\n" + failures.join("\n"));
  expect(failures).toEqual([]);

  // The cap holds, and in total the vendor moved no more than the ledger counted.
  let inLedger = 0;
  for (const k of Object.values(keys)) {
    const l = await ledgerOf(kb, k.key_id);
    inLedger += l.spent + l.reserved;
    expect(l.reserved).toBe(0);
  }
  expect(inLedger).toBe(counted);
  counted = inLedger;
  expect((await ledgerOf(kb, keys.stripe.key_id)).spent).toBeLessThanOrEqual(CAP_USD * 1e6);
  expect(fake.movedUsdMicros()).toBeLessThanOrEqual(counted);
  expect(tally.admitted).toBeGreaterThan(N / 10); // the generator still makes plenty of good calls
}, 120_000);
