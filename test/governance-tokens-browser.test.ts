import { afterAll, beforeAll, expect, test } from "bun:test";
import { join } from "node:path";
import type { Browser, Page } from "playwright-core";
import { ARTIFACTS, launchChromium, WAIT } from "./browser.ts";
import { startFakeVendor, type FakeVendor } from "./fake-vendor.ts";
import { ADMIN_TOKEN, apiCall, seedKeyBody, startKeybrake, type Running } from "./helpers.ts";

/**
 * The Tokens page and the "approve more spend" page in a real headless Chromium, under the
 * strict CSP: create an issuer token (shown once) that then works on the API, revoke it, refuse
 * an issuer at the login, and raise a capped run's caps in one action so its next call passes.
 */

let fake: FakeVendor;
let kb: Running;
let browser: Browser;
let page: Page;
const problems: string[] = [];

beforeAll(async () => {
  fake = await startFakeVendor();
  kb = await startKeybrake({ KEYBRAKE_STRIPE_BASE_URL: fake.url, KEYBRAKE_STRIPE_SECRET_KEY: fake.credentials.stripe, KEYBRAKE_LOG: "silent" });
  browser = await launchChromium();
  page = await (await browser.newContext({ viewport: { width: 1280, height: 900 } })).newPage();
  page.on("console", (m) => {
    // Refused logins (401/403), forms sent back with errors (422) and the missing key (404) are answers the steps expect.
    if (m.type() === "error" && !/status of (401|403|404|422)\b/.test(m.text())) problems.push(m.text());
  });
  page.on("pageerror", (e) => problems.push(e.message));
});

afterAll(async () => {
  await browser?.close();
  await kb?.stop();
  await fake?.stop();
});

const shot = (name: string) => page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
const pay = (vaultKey: string) =>
  fetch(`${kb.url}/stripe/v1/payment_intents`, {
    method: "POST",
    headers: { authorization: `Bearer ${vaultKey}`, "content-type": "application/x-www-form-urlencoded" },
    body: "amount=2900&currency=usd",
  });

async function login(token: string) {
  await page.goto(`${kb.url}/admin`);
  await page.fill("#token", token);
  await page.click("button[type=submit]");
}

let issuerToken = "";
let issuerId = "";

test("an admin creates an issuer token with a policy; it is shown once and works on the API within its policy", async () => {
  await login(ADMIN_TOKEN);
  await page.waitForURL(`${kb.url}/admin/keys`, WAIT);
  await page.click("nav >> text=Tokens");
  await page.waitForURL(`${kb.url}/admin/tokens`, WAIT);

  await page.fill("#tok-name", "kestra-<b>prod</b>");
  await page.selectOption("#tok-role", "issuer");
  await page.fill("#tok-policy", '{"vendors": ["stripe"], "max_daily_usd_cap": "lots"}');
  await page.click("form.token-form button[type=submit]");
  await page.getByText("policy.max_daily_usd_cap must be a number of US dollars").waitFor(WAIT);

  await page.fill("#tok-policy", '{"vendors": ["stripe"], "label_prefix": "kestra/", "max_daily_usd_cap": 100}');
  await page.click("form.token-form button[type=submit]");
  await page.locator("#new-token").waitFor(WAIT);
  issuerToken = await page.inputValue("#new-token");
  expect(issuerToken).toMatch(/^kbt_/);
  const row = page.locator("table.tokens tbody tr", { hasText: "kestra-<b>prod</b>" }); // the name is text, not markup
  await row.waitFor(WAIT);
  expect(await row.locator("b").count()).toBe(0);
  expect(await row.locator(".badge").first().textContent()).toBe("issuer");
  expect(await row.locator("pre.policy").textContent()).toContain('"label_prefix": "kestra/"');
  await shot("tokens-01-created");

  issuerId = (await kb.api("GET", "/tokens")).json.data.find((t: any) => t.name === "kestra-<b>prod</b>").token_id;
  expect((await apiCall(kb.url, "POST", "/vault/keys", seedKeyBody({ agent_run_label: "kestra/a", daily_usd_cap: 50 }), issuerToken)).status).toBe(201);
  expect((await apiCall(kb.url, "POST", "/vault/keys", seedKeyBody({ agent_run_label: "kestra/a", daily_usd_cap: 500 }), issuerToken)).status).toBe(403);

  // Reloading the page never shows the token again.
  await page.goto(`${kb.url}/admin/tokens`);
  expect(await page.content()).not.toContain(issuerToken);
});

test("an issuer token is refused at the login with a clear message", async () => {
  const context = await browser.newContext();
  const other = await context.newPage();
  await other.goto(`${kb.url}/admin`);
  await other.fill("#token", issuerToken);
  await other.click("button[type=submit]");
  await other.getByText("only admin-role tokens can sign in").waitFor(WAIT);
  expect((await context.cookies()).find((c) => c.name === "kb_session")).toBeUndefined();
  await context.close();
});

test("revoke the token from the page (with confirmation): the API refuses it at once", async () => {
  page.once("dialog", (d) => void d.accept());
  await page.click(`#token-${issuerId} button[hx-delete]`);
  await page.locator(`#token-${issuerId} .badge`, { hasText: "revoked" }).waitFor(WAIT);
  await shot("tokens-02-revoked");
  expect((await apiCall(kb.url, "GET", "/vault/keys", undefined, issuerToken)).status).toBe(401);
  const events = (await kb.api("GET", "/events?type=token.revoked")).json.data;
  expect(events[0]).toMatchObject({ target: issuerId, actor: { token_id: "bootstrap" } });
});

test("approve more spend: a capped run's daily cap and expiry are raised in one action, and its next call passes", async () => {
  const runLabel = "nightly/<i>run</i>";
  const a = await kb.issueKey(seedKeyBody({ agent_run_label: runLabel, daily_usd_cap: 30 }));
  const b = await kb.issueKey(seedKeyBody({ agent_run_label: runLabel, daily_usd_cap: 30 }));
  expect((await pay(a.vault_key)).status).toBe(200);
  expect((await pay(a.vault_key)).status).toBe(429); // $29 of $30 spent

  await page.goto(`${kb.url}/admin/keys/${a.key_id}/edit`);
  await page.getByRole("heading", { name: "Edit caps" }).waitFor(WAIT);
  expect(await page.locator(".lede i").count()).toBe(0); // the run label is text
  expect(await page.inputValue("#edit-daily_usd_cap")).toBe("30");
  await page.fill("#edit-daily_usd_cap", "-3");
  await page.click("form.edit-form button[type=submit]");
  await page.getByText("daily_usd_cap must be ≥ 0").waitFor(WAIT);
  expect((await kb.api("GET", `/vault/keys/${a.key_id}`)).json.daily_usd_cap).toBe(30); // nothing changed

  await page.fill("#edit-daily_usd_cap", "100");
  await page.fill("#edit-expires_in", "2d");
  await page.check("#edit-scope-run");
  await page.click("form.edit-form button[type=submit]");
  await page.getByText("Applied to 2 active key(s) of the run").waitFor(WAIT);
  await shot("keys-edit-applied");
  for (const k of [a, b]) {
    const view = (await kb.api("GET", `/vault/keys/${k.key_id}`)).json;
    expect(view.daily_usd_cap).toBe(100);
    expect(Date.parse(view.expires_at)).toBeGreaterThan(Date.now() + 86_400_000 * 1.9);
  }
  expect((await pay(a.vault_key)).status).toBe(200);
  const updated = (await kb.api("GET", "/events?type=key.updated")).json.data.filter((e: any) => [a.key_id, b.key_id].includes(e.target));
  expect(updated).toHaveLength(2);
  expect(updated[0].actor).toEqual({ token_id: "bootstrap", name: "KEYBRAKE_ADMIN_TOKEN" });
});

test("the edit form is CSRF-protected and a revoked key cannot be changed", async () => {
  const k = await kb.issueKey(seedKeyBody({ daily_usd_cap: 10 }));
  const cookie = (await page.context().cookies()).find((c) => c.name === "kb_session")!;
  const forged = await fetch(`${kb.url}/admin/keys/${k.key_id}/edit`, {
    method: "POST",
    redirect: "manual",
    headers: { cookie: `kb_session=${cookie.value}`, "content-type": "application/x-www-form-urlencoded" },
    body: "daily_usd_cap=100000",
  });
  expect(forged.status).toBe(403);
  expect((await kb.api("GET", `/vault/keys/${k.key_id}`)).json.daily_usd_cap).toBe(10);

  await kb.api("DELETE", `/vault/keys/${k.key_id}`);
  await page.goto(`${kb.url}/admin/keys/${k.key_id}/edit`);
  await page.getByText("a revoked key cannot be changed").waitFor(WAIT);
  expect(await page.locator("form.edit-form").count()).toBe(0);
  const missing = await page.goto(`${kb.url}/admin/keys/key_nope/edit`);
  expect(missing?.status()).toBe(404);
});

test("no console errors or CSP violations on these pages", () => {
  expect(problems).toEqual([]);
});
