import { afterAll, beforeAll, expect, test } from "bun:test";
import { join } from "node:path";
import type { Browser, Page } from "playwright-core";
import { ARTIFACTS, launchChromium, WAIT } from "./browser.ts";
import { startFakeVendor, type FakeVendor } from "./fake-vendor.ts";
import { ADMIN_TOKEN, seedKeyBody, startKeybrake, type Running } from "./helpers.ts";

/**
 * The admin pages in a real headless Chromium: htmx loaded from the binary under
 * the strict CSP, live spend, revocation, the audit filter, and escaping as a
 * browser sees it. Screenshots of each page go to test-artifacts/.
 */

let fake: FakeVendor;
let kb: Running;
let browser: Browser;
let page: Page;
/** Console errors and CSP violations: the pages must produce none. */
const problems: string[] = [];
const alerts: string[] = [];

beforeAll(async () => {
  fake = await startFakeVendor();
  kb = await startKeybrake({ KEYBRAKE_STRIPE_BASE_URL: fake.url, KEYBRAKE_STRIPE_SECRET_KEY: fake.credentials.stripe });
  browser = await launchChromium();
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
  // The polled Runs list picks the new run up by itself.
  await page.locator("table.runs tbody tr", { hasText: label }).waitFor(WAIT);
  await shot("02-keys-issued");
});

test("spend appears on the keys page without a reload", async () => {
  await page.goto(`${kb.url}/admin/keys?status=active`);
  await page.locator(`#key-${keyId}`).waitFor(WAIT);
  await page.evaluate(() => ((window as unknown as { notReloaded: boolean }).notReloaded = true));
  const res = await payThrough(vaultKey);
  expect(res.status).toBe(200);
  await page.locator(`#key-${keyId} .spent`, { hasText: "$29.00" }).waitFor(WAIT);
  expect(await page.evaluate(() => (window as unknown as { notReloaded?: boolean }).notReloaded)).toBe(true);
  expect(await page.locator(`#key-${keyId} meter`).getAttribute("value")).toBe("29");
});

test("revoke the key (with confirmation): acknowledged, the row stays where it was, its next call is refused", async () => {
  const before = await page.locator(`#key-${keyId}`).boundingBox();
  page.once("dialog", (d) => void d.accept());
  await page.click(`#key-${keyId} form[hx-post$="/revoke"] button`);
  await page.locator(`#key-${keyId} .badge`, { hasText: "revoked" }).waitFor(WAIT);
  await page.locator("#flash", { hasText: "Revoked key" }).waitFor(WAIT);
  await shot("03-keys-revoked");
  const refused = await payThrough(vaultKey);
  expect(refused.status).toBe(401);
  // Still on the Active tab after the next polls, marked revoked, in the same place.
  await page.waitForResponse((r) => r.url().includes("/admin/keys/table"), WAIT);
  await page.waitForResponse((r) => r.url().includes("/admin/keys/table"), WAIT);
  expect(await page.locator(`#key-${keyId}.inactive`).count()).toBe(1);
  expect((await page.locator(`#key-${keyId}`).boundingBox())?.y).toBe(before?.y);
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
  // The details open right under their row.
  const detail = page.locator("table.audit tr.detail-row");
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

/**
 * The 2 a.m. drill, at a laptop's and a phone's width: find the run by the start
 * of its label, see what it spent against its cap, revoke it from its row, and
 * see its next call refused in the audit log.
 */
for (const [width, height, tag] of [
  [1280, 860, "desktop"],
  [390, 844, "phone"],
] as const) {
  test(`incident flow at ${width} px: prefix → run row → revoke run → audit shows the next call refused as revoked`, async () => {
    const prefix = `incident-${tag}-${Date.now()}/`;
    const run = `${prefix}scheduled__2026-11-22`;
    const a = await kb.issueKey(seedKeyBody({ agent_run_label: run, daily_usd_cap: 60 }));
    const b = await kb.issueKey(seedKeyBody({ agent_run_label: run, daily_usd_cap: 40 }));
    const other = await kb.issueKey(seedKeyBody({ agent_run_label: `${prefix}manual__1`, daily_usd_cap: 30 }));
    for (const k of [a, a, a, b]) await payThrough(k.vault_key); // a: $58 then a cap hit; b: $29
    await payThrough(other.vault_key);

    const p = await browser.newPage({ viewport: { width, height }, deviceScaleFactor: tag === "phone" ? 2 : 1 });
    p.on("console", (m) => m.type() === "error" && problems.push(m.text()));
    p.on("pageerror", (e) => problems.push(e.message));
    await p.context().addCookies(await page.context().cookies());
    await p.goto(`${kb.url}/admin/keys`);
    await p.fill("#kf-label", prefix + "*");
    await p.click("form.filters button[type=submit]");
    await p.waitForURL(/label=incident/, WAIT);
    const rows = p.locator("table.runs tbody tr");
    await rows.first().waitFor(WAIT);
    expect(await rows.count()).toBe(2);
    const row = rows.filter({ hasText: run });
    // What it spent against its cap, and its cap hit, on the row.
    await row.locator(".spent", { hasText: "$87.00" }).waitFor(WAIT);
    expect(await row.innerText()).toContain("of $100.00");
    expect(await row.locator(".badge.warn").innerText()).toBe("1");
    await shot(`10-incident-${tag}-before`, p);

    let confirmText = "";
    p.once("dialog", (d) => {
      confirmText = d.message();
      void d.accept();
    });
    const top = () => row.evaluate((el) => el.getBoundingClientRect().top + window.scrollY);
    const before = await top();
    await row.getByRole("button", { name: /Revoke run/ }).click();
    await row.locator(".badge", { hasText: "revoked" }).waitFor(WAIT);
    expect(confirmText).toContain(`“${run}”`);
    expect(confirmText).toContain("2 live keys");
    await p.locator("#flash", { hasText: "Revoked 2 keys" }).waitFor(WAIT);
    // The run is still listed, in place, with its final spend.
    expect(Math.abs((await top()) - before)).toBeLessThan(2);
    expect(await row.locator(".spent").innerText()).toBe("$87.00");
    await shot(`11-incident-${tag}-after-revoke`, p);

    expect((await payThrough(a.vault_key)).status).toBe(401);
    await row.getByRole("link", { name: "calls" }).click();
    await p.waitForURL(/\/admin\/audit\?label=/, WAIT);
    const refused = p.locator("table.audit tbody tr", { has: p.locator(".badge", { hasText: "revoked" }) });
    await refused.first().waitFor(WAIT);
    expect(await refused.count()).toBe(1);
    expect(await refused.locator(".status").innerText()).toBe("401");
    await p.getByText(/This filter matches: 5 calls · \$87\.00 spent · 2 refused · 1 cap hit/).waitFor(WAIT);
    await shot(`12-incident-${tag}-audit`, p);
    if (tag === "phone") {
      expect(await p.evaluate(() => document.documentElement.scrollWidth)).toBeLessThanOrEqual(390);
      // Legible: no text on the page smaller than 11 px.
      const tiny = await p.evaluate(() =>
        [...document.querySelectorAll("main *")]
          .filter((el) => el.childNodes.length && [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent!.trim()))
          .filter((el) => parseFloat(getComputedStyle(el).fontSize) < 11)
          .map((el) => el.textContent),
      );
      expect(tiny).toEqual([]);
    }
    await p.close();
  }, 30_000);
}

test("times can be shown in the browser's zone, and the choice is remembered", async () => {
  const p = await browser.newPage({ viewport: { width: 1280, height: 860 }, timezoneId: "Asia/Tokyo" });
  await p.context().addCookies(await page.context().cookies());
  await p.goto(`${kb.url}/admin/audit`);
  const first = p.locator("table.audit tbody tr time").first();
  const utcText = await first.innerText();
  await p.getByRole("button", { name: "Times: UTC" }).click();
  await p.getByRole("button", { name: "Times: local" }).waitFor(WAIT);
  const iso = (await first.getAttribute("datetime"))!;
  const tokyo = new Date(Date.parse(iso) + 9 * 3_600_000).toISOString();
  expect(await first.innerText()).toBe(`${tokyo.slice(5, 10)} ${tokyo.slice(11, 19)}`);
  expect(await first.innerText()).not.toBe(utcText);
  await p.reload();
  await p.getByRole("button", { name: "Times: local" }).waitFor(WAIT);
  expect(await p.locator("table.audit th[data-zone-label]").innerText()).toMatch(/local/i);
  await p.close();
}, 30_000);

test("spend: the window selector, the per-run chart with its cap line and a time axis, today first on a phone", async () => {
  await page.goto(`${kb.url}/admin/spend?days=7&label=${encodeURIComponent(label)}`);
  await page.locator("svg[role=img] line.cap-line").waitFor({ state: "attached", ...WAIT });
  expect(await page.locator("#run-title + desc, svg desc").first().textContent()).toContain("daily cap $100.00");
  expect(await page.locator("svg g.axis.x text").count()).toBeGreaterThanOrEqual(2);
  expect(await page.locator('nav.tabs a[aria-current="page"]').innerText()).toBe("7 days");
  await shot("13-spend-run-7d");
  const phone = await browser.newPage({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2 });
  await phone.context().addCookies(await page.context().cookies());
  await phone.goto(`${kb.url}/admin/spend?days=90`);
  const chart = phone.locator("figure.chart").last();
  await chart.waitFor(WAIT);
  // The daily chart opens on its right end: today is on screen, the oldest days are what scrolls.
  const today = chart.locator("g.axis.x text", { hasText: "today" });
  const box = await today.boundingBox();
  expect(box!.x + box!.width).toBeLessThanOrEqual(390);
  expect(box!.x).toBeGreaterThanOrEqual(0);
  expect(box!.height).toBeGreaterThanOrEqual(11);
  await shot("14-spend-phone", phone);
  await phone.close();
}, 30_000);

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
  await kb.services.adminSessions.end(session.value);
  await page.waitForURL(`${kb.url}/admin`, WAIT);
  await page.locator("#token").waitFor(WAIT);
});

test("no console errors or CSP violations on any page", () => {
  expect(problems).toEqual([]);
});
