import { afterAll, beforeAll, expect, test } from "bun:test";
import { join } from "node:path";
import type { Browser, Page } from "playwright-core";
import { ARTIFACTS, launchChromium, WAIT } from "./browser.ts";
import { startFakeVendor, type FakeVendor } from "./fake-vendor.ts";
import { ADMIN_TOKEN, seedKeyBody, startKeybrake, type Running } from "./helpers.ts";

/**
 * The Budgets, Webhooks and Events admin pages in a real headless Chromium, under the strict
 * CSP: spend against cap, create/edit/delete, a webhook secret shown once, deliveries with
 * their attempts, the event trail with filters and paging, and client text escaped.
 */

let fake: FakeVendor;
let kb: Running;
let browser: Browser;
let page: Page;
let receiver: ReturnType<typeof Bun.serve>;
const received: string[] = [];
const problems: string[] = [];
const alerts: string[] = [];

const XSS = `<img src=x onerror="alert('xss')">`;

beforeAll(async () => {
  fake = await startFakeVendor();
  kb = await startKeybrake({ KEYBRAKE_STRIPE_BASE_URL: fake.url, KEYBRAKE_STRIPE_SECRET_KEY: fake.credentials.stripe, KEYBRAKE_LOG: "silent" });
  receiver = Bun.serve({ port: 0, hostname: "127.0.0.1", fetch: async (req) => (received.push(await req.text()), new Response("ok")) });
  browser = await launchChromium();
  page = await (await browser.newContext({ viewport: { width: 1280, height: 860 } })).newPage();
  page.on("console", (m) => {
    if (m.type() === "error" && !/status of (401|422)\b/.test(m.text())) problems.push(m.text());
  });
  page.on("pageerror", (e) => problems.push(e.message));
  page.on("console", (m) => { if (m.type() === "error") console.log("DBG", page.url(), JSON.stringify(m.location()), m.text().slice(0, 40)); });
  page.on("dialog", (d) => {
    if (d.type() === "confirm") return;
    alerts.push(d.message());
    void d.dismiss();
  });
});

afterAll(async () => {
  await browser?.close();
  receiver?.stop(true);
  await kb?.stop();
  await fake?.stop();
});

const shot = (name: string) => page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });

test("sign in and reach the three pages from the navigation", async () => {
  await page.goto(`${kb.url}/admin/budgets`);
  await page.fill("#token", ADMIN_TOKEN);
  await page.click("button[type=submit]");
  await page.waitForURL(`${kb.url}/admin/budgets`, WAIT);
  for (const [link, heading] of [["Webhooks", "Webhooks"], ["Events", "Events"], ["Budgets", "Budgets"]] as const) {
    await page.click(`nav >> text=${link}`);
    await page.getByRole("heading", { name: heading, exact: true }).waitFor(WAIT);
  }
}, 30_000);

test("without a session the pages send the browser to the login", async () => {
  const res = await fetch(`${kb.url}/admin/budgets`, { redirect: "manual" });
  expect(res.status).toBe(303);
  expect(res.headers.get("location")).toStartWith("/admin");
  const post = await fetch(`${kb.url}/admin/budgets`, { method: "POST", redirect: "manual", body: new URLSearchParams({ name: "x" }) });
  expect(post.status).toBe(303);
  expect((await kb.api("GET", "/budgets")).json.data).toHaveLength(0);
}, 30_000);

test("budgets: field errors inline, then create; spend against cap; edit; delete with confirmation; client text escaped", async () => {
  await page.fill("#nb-name", `Pool ${XSS}`);
  await page.fill("#nb-label_prefix", "browser/");
  await page.fill("#nb-daily_usd_cap", "lots");
  await page.click("#budgets form[action='/admin/budgets'] button[type=submit]");
  await page.getByText("daily_usd_cap must be a number of US dollars").waitFor(WAIT);
  await page.fill("#nb-daily_usd_cap", "100");
  await page.click("#budgets form[action='/admin/budgets'] button[type=submit]");
  await page.getByText("created.").waitFor(WAIT);
  const [budget] = (await kb.api("GET", "/budgets")).json.data;
  expect(budget).toMatchObject({ name: `Pool ${XSS}`, label_prefix: "browser/", daily_usd_cap: 100 });

  // Spend through a key of the budget shows on the page.
  const key = await kb.issueKey(seedKeyBody({ agent_run_label: "browser/run-1", daily_usd_cap: 500 }));
  const paid = await fetch(`${kb.url}/stripe/v1/payment_intents`, { method: "POST", headers: { authorization: `Bearer ${key.vault_key}`, "content-type": "application/x-www-form-urlencoded" }, body: "amount=2900&currency=usd" });
  expect(paid.status).toBe(200);
  await page.reload();
  const row = page.locator(`#budget-${budget.budget_id}`);
  await row.locator("strong.spent", { hasText: "$29.00" }).waitFor(WAIT);
  await row.getByText("of $100.00").waitFor(WAIT);
  await row.getByText("$71.00 left today").waitFor(WAIT);
  expect(await row.locator("img").count()).toBe(0);
  expect(await row.innerText()).toContain(XSS);
  await shot("budgets-01-list");

  // Edit the cap.
  await row.locator("summary", { hasText: "Edit" }).click();
  await row.locator(`input[name=daily_usd_cap]`).fill("250.5");
  await row.getByRole("button", { name: "Save" }).click();
  await page.waitForURL(/saved=1/, WAIT);
  await page.getByText("Budget saved.").waitFor(WAIT);
  expect((await kb.api("GET", `/budgets/${budget.budget_id}`)).json.daily_usd_cap).toBe(250.5);
  await page.locator(`#budget-${budget.budget_id}`).getByText("of $250.50").waitFor(WAIT);

  // Delete it.
  page.once("dialog", (d) => void d.accept());
  await page.locator(`#budget-${budget.budget_id}`).getByRole("button", { name: /Delete budget/ }).click();
  await page.getByText("deleted.").waitFor(WAIT);
  expect(await page.locator(`#budget-${budget.budget_id}`).count()).toBe(0);
  expect((await kb.api("GET", `/budgets/${budget.budget_id}`)).json.status).toBe("deleted");
}, 30_000);

test("webhooks: the secret is shown once; deliveries list each attempt", async () => {
  await page.click("nav >> text=Webhooks");
  await page.fill("#wh-url", "ftp://nope");
  await page.click("#webhook-form button[type=submit]");
  await page.getByText("url must be http or https").waitFor(WAIT);
  await page.fill("#wh-url", `http://127.0.0.1:${receiver.port}/hook`);
  await page.check("input[name=events][value='budget.updated']");
  await page.fill("#wh-thresholds", "0.8, 100%");
  await page.click("#webhook-form button[type=submit]");
  const secret = await page.inputValue("#new-webhook-secret");
  expect(secret).toMatch(/^whsec_/);
  const [hook] = (await kb.api("GET", "/webhooks")).json.data;
  expect(hook).toMatchObject({ thresholds: [0.8, 1], events: ["cap.threshold", "cap.hit", "budget.updated"] });
  await shot("webhooks-01-created");
  await page.goto(`${kb.url}/admin/webhooks`);
  expect(await page.content()).not.toContain(secret);

  await kb.api("POST", "/budgets", { name: "for the hook", label_prefix: "hooked/", daily_usd_cap: 1 });
  for (let i = 0; i < 500 && received.length === 0; i++) await Bun.sleep(10);
  expect(received).toHaveLength(1);
  await page.locator(`#webhook-${hook.webhook_id}`).getByRole("link", { name: "Deliveries" }).click();
  await page.getByRole("heading", { name: "Deliveries" }).waitFor(WAIT);
  await page.getByText("budget.updated").first().waitFor(WAIT);
  await page.getByText(/#1 .* — 200, \d+ ms/).waitFor(WAIT);
  await shot("webhooks-02-deliveries");

  await page.goto(`${kb.url}/admin/webhooks`);
  page.once("dialog", (d) => void d.accept());
  await page.locator(`#webhook-${hook.webhook_id}`).getByRole("button", { name: /Delete webhook/ }).click();
  await page.locator(`#webhook-${hook.webhook_id}`).getByText("deleted").waitFor(WAIT);
  expect((await kb.api("GET", `/webhooks/${hook.webhook_id}`)).json.status).toBe("deleted");
}, 30_000);

test("events: the trail with who and what, filtered by type, paged; bad filters named", async () => {
  // 60 more events so the trail needs a second page.
  for (let i = 0; i < 60; i++) await kb.api("POST", "/budgets", { name: `bulk ${i}`, label_prefix: `bulk-${i}/`, daily_usd_cap: 1 });
  // An operator whose token is named like markup revokes a key: the trail names it, as text.
  const ops = (await kb.api("POST", "/tokens", { name: `ops ${XSS}`, role: "admin" })).json;
  const key = await kb.issueKey(seedKeyBody());
  expect((await kb.api("DELETE", `/vault/keys/${key.key_id}`, undefined, ops.token)).status).toBe(200);
  await page.goto(`${kb.url}/admin/events`);
  await page.getByRole("cell", { name: "key.revoked" }).waitFor(WAIT);
  expect(await page.locator("main img").count()).toBe(0);
  expect(await page.locator("main").innerText()).toContain(`ops ${XSS}`);

  await page.selectOption("#ev-type", "budget.updated");
  await page.click("form.filters button[type=submit]");
  await page.waitForURL(/type=budget.updated/, WAIT);
  const types = await page.locator("table.events tbody tr td:nth-child(2)").allInnerTexts();
  expect(types).toHaveLength(50);
  expect(new Set(types.map((t) => t.trim()))).toEqual(new Set(["budget.updated"]));
  await shot("events-01-filtered");
  await page.getByRole("link", { name: "Older events" }).click();
  await page.waitForURL(/cursor=/, WAIT);
  const older = await page.locator("table.events tbody tr").count();
  // Every budget.updated event is on one of the two pages, none twice.
  expect(older).toBeGreaterThan(0);
  expect(older + 50).toBe((await kb.services.events.list({ type: "budget.updated", limit: 500 })).rows.length);

  await page.goto(`${kb.url}/admin/events?since=yesterday`);
  await page.getByText("since must be a date and time").waitFor(WAIT);
}, 30_000);

test("no console errors, CSP violations or script alerts on any page", () => {
  expect(problems).toEqual([]);
  expect(alerts).toEqual([]);
});
