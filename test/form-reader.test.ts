/**
 * The strict readers, as a table: what each accepts means one thing to every parser,
 * and what it refuses says why. The fake vendor's Rack parser (test/fake-vendor.ts) is
 * checked against Rack's documented behaviour in the same table, so the attack and fuzz
 * tests built on it model Stripe, not Keybrake.
 */
import { describe, expect, test } from "bun:test";
import { encodeForm, readForm } from "../src/vendors/form-reader.ts";
import { readJson } from "../src/vendors/json-reader.ts";
import { rackParse } from "./fake-vendor.ts";

const enc = (s: string) => new TextEncoder().encode(s);
const nested = { keys: "nested" as const };

describe("Stripe form bodies (Rack rules)", () => {
  // body, what Rack makes of it, what Keybrake's reader says (pairs, or a fragment of its refusal)
  // (null: Rack raises or yields bytes that are not text; the fake is more permissive there, not less.)
  const cases: [string, Record<string, unknown> | null, [string, string][] | string][] = [
    ["amount=100&currency=usd", { amount: "100", currency: "usd" }, [["amount", "100"], ["currency", "usd"]]],
    ["amount=100&amount=100000", { amount: "100000" }, "given more than once"],
    ["amount=100;amount=100000", { amount: "100000" }, 'raw ";"'],
    ["amount=100& amount=100000", { amount: "100000" }, 'raw " "'],
    ["[amount]=100000", { amount: "100000" }, "is not of the form"],
    ["amount]=100000", { amount: "100000" }, "is not of the form"],
    ["expand[]=a&expand[]=b", { expand: ["a", "b"] }, [["expand[]", "a"], ["expand[]", "b"]]],
    ["metadata[order%20id]=a+b", { metadata: { "order id": "a b" } }, [["metadata[order id]", "a b"]]],
    ["items[0][price]=p_1", { items: { "0": { price: "p_1" } } }, [["items[0][price]", "p_1"]]],
    ["amount[]=1&amount=1000", { amount: "1000" }, "both as a value"],
    ["a[b]=1&a=2", { a: "2" }, "both as a value"],
    ["%61mount=5", { amount: "5" }, [["amount", "5"]]],
    ["amount", { amount: null }, 'has no "="'],
    ["amount=1&&currency=usd", { amount: "1", currency: "usd" }, "empty pair"],
    ["amount=%ff", null, "not UTF-8"],
    ["amount=%zz", null, "percent-escape"],
  ];
  for (const [body, rack, ours] of cases) {
    test(JSON.stringify(body), () => {
      if (rack) expect(rackParse(body)).toEqual(rack as any);
      const r = readForm(enc(body), nested);
      if (typeof ours === "string") {
        expect(r.ok).toBe(false);
        if (!r.ok) expect(r.message).toContain(ours);
      } else {
        expect(r).toEqual({ ok: true, pairs: ours });
        // What is forwarded means to Rack exactly what was priced.
        expect(rackParse(new TextDecoder().decode(encodeForm(ours)))).toEqual(rack as any);
      }
    });
  }
});

describe("Twilio form bodies", () => {
  const twilio = { keys: "flat" as const, caseInsensitive: true, repeatable: new Set(["mediaurl"]) };
  test.each([
    ["To=%2B15005550006&Body=hi", true],
    ["To=%2B1&to=%2B44", false],
    ["MediaUrl=a&MediaUrl=b", true],
    ["Body=hi&BODY=x", false],
    ["To[]=x", false],
  ] as const)("%s → %p", (body, ok) => {
    expect(readForm(enc(body), twilio).ok).toBe(ok);
  });
});

describe("Resend JSON bodies", () => {
  test.each([
    ['{"to":"a@x.test"}', true],
    ['{"to":"a@x.test","to":["b@x.test","c@x.test"]}', false],
    ['{"to":"a@x.test","To":"b@x.test"}', false],
    ['{"\\u0074o":"a@x.test","to":"b@x.test"}', false],
    ['{"a":{"b":1},"c":{"b":2}}', true],
    ['[{"to":"a"},{"to":"b"}]', true],
    ['{"s":"a\\"to\\":1","to":"x"}', true],
    ["\ufeff{}", false],
    ["{", false],
  ] as const)("%s → %p", (body, ok) => {
    expect(readJson(enc(body)).ok).toBe(ok);
  });
});
