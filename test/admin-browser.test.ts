import { afterAll, beforeAll, expect, test } from "bun:test";
import { existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium, type Browser, type Page } from "playwright-core";
import { startFakeVendor, type FakeVendor } from "./fake-vendor.ts";
import { ADMIN_TOKEN, seedKeyBody, startKeybrake, type Running } from "./helpers.ts";

/**
 * The admin pages in a real headless Chromium: htmx loaded from the binary under
 * the strict CSP, live spend, revocation, the audit filter, and escaping as a
 * browser sees it. Screenshots of each page go to test-artifacts/.
 */

const CHROMIUM = "/usr/bin/chromium";
const ARTIFACTS = join(import.meta.dir, "..", "test-artifacts");
const WAIT = { timeout: 10_000 };

let fake: FakeVendor;
let kb: Running;
let browser: Browser;
let page: Page;
/** Console errors and CSP violations: the pages must produce none. */
const problems: string[] = [];
const alerts: string[] = [];

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(
      `admin-browser.test.ts needs Chromium at ${CHROMIUM}. Install it with: apt-get update && apt-get install -y --no-install-recommends chromium`,
    );
  }
  mkdirSync(ARTIFACTS, { recursive: true });
  fake = await startFakeVendor();
  kb = await startKeybrake({ KEYBRAKE_STRIPE_BASE_URL: fake.url, KEYBRAKE_STRIPE_SECRET_KEY: fake.credentials.stripe });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: kb.url });
  page = await context.newPage();
  page.on("console", (m) => {
    // A refused login (401) and a form sent back with errors (422) are answers the steps expect.
    if (m.type() === "error" && !/status of (401|422)\b/.test(m.text())) problems.push(m.text());
  });
  page.on("pageerror", (e) => problems.push(e.message));
  page.on("dialog", (d) => {
    // Confirmations are accepted by the steps that expect them; anything else (an alert) is a failure.
    if (d.type() === "confirm") return;
    alerts.push(d.message());
    void d.dismiss();
  });
});

afterAll(async () => {
  await browser?.close();
  await kb?.stop();
  await fake?.stop();
});

const shot = (name: string, p: Page = page) => p.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });

function payThrough(vaultKey: string) {
  return fetch(`${kb.url}/stripe/v1/payment_intents`, {
    method: "POST",
    headers: { authorization: `Bearer ${vaultKey}`, "content-type": "application/x-www-form-urlencoded" },
    body: "amount=2900&currency=usd",
  });
}

const label = `browser-run/${Date.now()}`;
let vaultKey = "";
let keyId = "";

test("log in with the management token", async () => {
  await page.goto(`${kb.url}/admin`);
  await shot("01-login");
  await page.fill("#token", "kbt_not_the_token_0123456789");
  await page.click("button[type=submit]");
  await page.getByText("not a valid management token").waitFor(WAIT);
  await page.fill("#token", ADMIN_TOKEN);
  await page.click("button[type=submit]");
  await page.waitForURL(`${kb.url}/admin/keys`, WAIT);
  await page.getByRole("heading", { name: "Vault keys" }).waitFor(WAIT);
  // htmx came from our own origin and initialised under the CSP.
  expect(await page.evaluate(() => (window as unknown as { htmx?: { version: string } }).htmx?.version)).toStartWith("4.");
});

test("issue a key through the form: field errors inline, then the vault key shown once with a copy button", async () => {
  await page.click("#issue > summary");
  await page.fill("#f-agent_run_label", label);
  await page.fill("#f-daily_usd_cap", "not money");
  await page.fill("#f-allowed_endpoints", "POST /v1/payment_intents");
  await page.click("form.issue-form button[type=submit]");
  await page.getByText("daily_usd_cap must be a number of US dollars").waitFor(WAIT);
  expect(await page.getAttribute("#f-daily_usd_cap", "aria-invalid")).toBe("true");

  await page.fill("#f-daily_usd_cap", "100");
  await page.click("form.issue-form button[type=submit]");
  await page.locator("#new-vault-key").waitFor(WAIT);
  vaultKey = await page.inputValue("#new-vault-key");
  expect(vaultKey).toMatch(/^vk_[A-Za-z0-9_-]{43}$/);
  await page.click("button[data-copy]");
  await page.locator("button[data-copy]", { hasText: /Copied|Press Ctrl\+C/ }).waitFor(WAIT);
  keyId = (await kb.api("GET", `/vault/keys?label=${encodeURIComponent(label)}`)).json.data[0].key_id;
  // The polled list picks the new key up by itself.
  await page.locator(`#key-${keyId}`).waitFor(WAIT);
  await shot("02-keys-issued");
});

test("spend appears on the keys page without a reload", async () => {
  await page.evaluate(() => ((window as unknown as { notReloaded: boolean }).notReloaded = true));
  const res = await payThrough(vaultKey);
  expect(res.status).toBe(200);
  await page.locator(`#key-${keyId} .spent`, { hasText: "$29.00" }).waitFor(WAIT);
  expect(await page.evaluate(() => (window as unknown as { notReloaded?: boolean }).notReloaded)).toBe(true);
  expect(await page.locator(`#key-${keyId} meter`).getAttribute("value")).toBe("29");
});

test("revoke the key (with confirmation); its next proxied call is refused", async () => {
  page.once("dialog", (d) => void d.accept());
  await page.click(`#key-${keyId} button[hx-delete]`);
  await page.locator(`#key-${keyId} .badge`, { hasText: "revoked" }).waitFor(WAIT);
  await shot("03-keys-revoked");
  const refused = await payThrough(vaultKey);
  expect(refused.status).toBe(401);
  // Off the active tab on the next poll.
  await page.locator(`#key-${keyId}`).waitFor({ state: "detached", ...WAIT });
});

test("filter the audit log by label: the revoked call is there, with its details", async () => {
  await page.click("nav >> text=Audit log");
  await page.waitForURL(/\/admin\/audit/, WAIT);
  await page.fill("#af-label", label);
  await page.click("form.filters button[type=submit]");
  await page.waitForURL(/label=/, WAIT);
  const revokedRow = page.locator("table.audit tbody tr", { has: page.locator(".badge", { hasText: "revoked" }) });
  await revokedRow.waitFor(WAIT);
  expect(await page.locator("table.audit tbody tr").count()).toBe(2);

  const forwarded = page.locator("table.audit tbody tr", { has: page.locator(".badge", { hasText: "forwarded" }) });
  await forwarded.getByRole("link", { name: /Details/ }).click();
  const detail = page.locator("#audit-detail");
  await detail.getByText(/^req_/).waitFor(WAIT);
  await detail.getByText(/^pi_/).waitFor(WAIT);
  expect(await detail.getByText("$29.00").count()).toBe(2); // estimated and settled
  expect(await page.getAttribute("a[download]", "href")).toContain("label=");
  await shot("04-audit");
});

test("spend over time: all runs, then the chosen run", async () => {
  await page.goto(`${kb.url}/admin/spend`);
  await page.locator("svg[role=img] rect.s0").first().waitFor(WAIT);
  await shot("05-spend");
  await page.fill("#spend-label", label);
  await page.click("form.filters button[type=submit]");
  await page.locator("svg[role=img] path.line").waitFor(WAIT);
  await shot("06-spend-run");
});

test("vendors: configured state, last 4, and a working test connection", async () => {
  await page.goto(`${kb.url}/admin/vendors`);
  const stripe = page.locator("#vendor-stripe");
  await stripe.getByText(`•••• ${fake.credentials.stripe.slice(-4)}`).waitFor(WAIT);
  await stripe.getByRole("button", { name: "Test connection" }).click();
  await stripe.getByText(/Connected: HTTP 200/).waitFor(WAIT);
  await shot("07-vendors");
});

test("a label written as HTML is shown as text on the keys and audit pages", async () => {
  const xss = "<img src=x onerror=alert(1)>";
  const k = await kb.issueKey(seedKeyBody({ agent_run_label: xss }));
  await kb.api("DELETE", `/vault/keys/${k.key_id}`);
  expect((await payThrough(k.vault_key)).status).toBe(401);

  await page.goto(`${kb.url}/admin/keys?status=all`);
  await page.locator(`#key-${k.key_id}`).getByText(xss, { exact: true }).waitFor(WAIT);
  expect(await page.locator("img").count()).toBe(0);

  await page.goto(`${kb.url}/admin/audit?label=${encodeURIComponent(xss)}`);
  await page.locator("table.audit").getByText(xss, { exact: true }).waitFor(WAIT);
  expect(await page.locator("img").count()).toBe(0);
  expect(alerts).toEqual([]);
});

test("readable on a phone", async () => {
  const phone = await browser.newPage({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2 });
  await phone.context().addCookies(await page.context().cookies());
  await phone.goto(`${kb.url}/admin/keys?status=all`);
  await phone.getByRole("heading", { name: "Vault keys" }).waitFor(WAIT);
  await shot("08-keys-phone", phone);
  // Nothing but the tables' own scroll boxes may be wider than the screen.
  const wider = await phone.evaluate(() =>
    [...document.querySelectorAll("body *")]
      .filter((el) => el.getBoundingClientRect().right > window.innerWidth + 1 && !el.closest(".table-wrap, .chart"))
      .map((el) => `${el.tagName.toLowerCase()}.${el.className}`),
  );
  expect(wider).toEqual([]);
  await phone.goto(`${kb.url}/admin/audit`);
  await phone.locator("table.audit").waitFor(WAIT);
  expect(await phone.evaluate(() => document.documentElement.scrollWidth)).toBeLessThanOrEqual(390);
  await shot("09-audit-phone", phone);
  await phone.close();
});

test("when the session ends, the polling keys page goes to the login page by itself", async () => {
  await page.goto(`${kb.url}/admin/keys`);
  await page.getByRole("heading", { name: "Vault keys" }).waitFor(WAIT);
  const session = (await page.context().cookies()).find((c) => c.name === "kb_session")!;
  kb.services.adminSessions.end(session.value);
  await page.waitForURL(`${kb.url}/admin`, WAIT);
  await page.locator("#token").waitFor(WAIT);
});

test("no console errors or CSP violations on any page", () => {
  expect(problems).toEqual([]);
});
