import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { sha256Hex } from "../src/domain/crypto.ts";
import { ADMIN_TOKEN, seedKeyBody, startKeybrake, type Running, dbRow, dbRows } from "./helpers.ts";

/**
 * The admin pages over real HTTP: who may see them, what a session is, CSRF on
 * every change, and client-written text never becoming markup.
 */

let kb: Running;
beforeAll(async () => {
  kb = await startKeybrake();
});
afterAll(() => kb.stop());

const XSS_LABEL = "<img src=x onerror=alert(1)>";

interface Session {
  cookie: string;
  csrf: string;
}

function get(path: string, init: RequestInit = {}) {
  return fetch(kb.url + path, { redirect: "manual", ...init });
}

/** A form POST the way a browser sends it (optionally as htmx). */
function postForm(path: string, fields: Record<string, string>, headers: Record<string, string> = {}) {
  return fetch(kb.url + path, {
    method: "POST",
    redirect: "manual",
    headers: { "content-type": "application/x-www-form-urlencoded", ...headers },
    body: new URLSearchParams(fields).toString(),
  });
}

async function login(token = ADMIN_TOKEN): Promise<Session> {
  const res = await postForm("/admin/login", { token });
  expect(res.status).toBe(303);
  const cookie = res.headers.get("set-cookie")!.split(";")[0]!;
  const page = await (await get("/admin/keys", { headers: { cookie } })).text();
  const csrf = /name="_csrf" value="([^"]+)"/.exec(page)?.[1];
  expect(csrf).toBeString();
  return { cookie, csrf: csrf! };
}

const as = (s: Session, htmx = false, csrf = true): Record<string, string> => ({
  cookie: s.cookie,
  ...(htmx ? { "hx-request": "true" } : {}),
  ...(csrf ? { "x-csrf-token": s.csrf } : {}),
});

/** Elements matching a selector, counted by a real HTML parser (not a regex). */
async function countElements(html: string, selector: string): Promise<number> {
  let n = 0;
  await new HTMLRewriter()
    .on(selector, {
      element() {
        n++;
      },
    })
    .transform(new Response(html))
    .text();
  return n;
}

const keyStatus = async (keyId: string) => (await kb.api("GET", `/vault/keys/${keyId}`)).json.status;
const countKeys = async () => (await dbRow<{ n: number }>(kb.services, "SELECT count(*) AS n FROM vault_keys"))!.n;

/** Every admin route but login and the static assets. */
const PROTECTED: [method: string, path: string][] = [
  ["GET", "/admin/keys"],
  ["GET", "/admin/keys?status=revoked&label=x"],
  ["GET", "/admin/keys/table"],
  ["POST", "/admin/keys"],
  ["DELETE", "/admin/keys/key_whatever"],
  ["POST", "/admin/keys/key_whatever/revoke"],
  ["POST", "/admin/runs/revoke"],
  ["GET", "/admin/audit"],
  ["GET", "/admin/audit/1"],
  ["GET", "/admin/audit/rows"],
  ["GET", "/admin/audit/export.csv"],
  ["GET", "/admin/spend"],
  ["GET", "/admin/vendors"],
  ["POST", "/admin/vendors/stripe"],
  ["POST", "/admin/vendors/stripe/test"],
  ["POST", "/admin/logout"],
];

describe("without a session", () => {
  const cases: [name: string, cookie: () => Promise<string | undefined>][] = [
    ["no cookie", async () => undefined],
    ["an unknown session id", async () => "kb_session=not-a-real-session-id"],
    [
      "a session that has ended (logged out)",
      async () => {
        const s = await login();
        expect((await postForm("/admin/logout", { _csrf: s.csrf }, { cookie: s.cookie })).status).toBe(303);
        return s.cookie;
      },
    ],
    [
      "a session older than 12 hours",
      async () => {
        const started = (await kb.services.adminSessions.start(ADMIN_TOKEN, Date.now() - 12 * 3_600_000 - 1000))!;
        return `kb_session=${started.sessionId}`;
      },
    ],
  ];

  for (const [name, cookieOf] of cases) {
    test(`${name}: pages redirect to the login, htmx fragments get 401`, async () => {
      const cookie = await cookieOf();
      for (const [method, path] of PROTECTED) {
        const headers: Record<string, string> = cookie ? { cookie } : {};
        const page = await get(path, { method, headers });
        expect(`${method} ${path} ${page.status}`).toBe(`${method} ${path} 303`);
        expect(page.headers.get("location")).toStartWith("/admin");
        expect(await page.text()).toBe("");

        const frag = await get(path, { method, headers: { ...headers, "hx-request": "true" } });
        expect(`${method} ${path} ${frag.status}`).toBe(`${method} ${path} 401`);
        expect(frag.headers.get("hx-redirect")).toBe("/admin");
        expect(await frag.text()).not.toContain("<table");
      }
    });
  }

  test("a page remembers where it was going; the login page is served with a strict CSP", async () => {
    const res = await get("/admin/audit?label=nightly");
    expect(res.headers.get("location")).toBe("/admin?next=%2Fadmin%2Faudit%3Flabel%3Dnightly");
    const loginPage = await get("/admin");
    expect(loginPage.status).toBe(200);
    expect(loginPage.headers.get("content-security-policy")).toContain("script-src 'self'");
    expect(loginPage.headers.get("content-security-policy")).toContain("style-src 'self'");
    expect(await loginPage.text()).toContain('name="token"');
  });

  test("static assets are public, come from the binary and are cached for long", async () => {
    const page = await (await get("/admin")).text();
    const src = /src="(\/admin\/assets\/htmx\.min\.js\?v=[0-9a-f]+)"/.exec(page)?.[1];
    expect(src).toBeString();
    const htmx = await get(src!);
    expect(htmx.status).toBe(200);
    expect(htmx.headers.get("content-type")).toContain("javascript");
    expect(htmx.headers.get("cache-control")).toContain("max-age=31536000");
    expect(await htmx.text()).toContain("htmx");
    expect((await get("/admin/assets/admin.css")).headers.get("content-type")).toContain("text/css");
    expect((await get("/admin/assets/secrets.txt")).status).toBe(404);
    expect(page).not.toMatch(/(src|href)="https?:/);
  });
});

describe("login", () => {
  test("a wrong token, a vault key or nothing is refused without a session", async () => {
    const { vault_key } = await kb.issueKey(seedKeyBody());
    for (const token of ["kbt_wrong_token_0123456789abcdef", vault_key, "", ADMIN_TOKEN + "x"]) {
      const res = await postForm("/admin/login", { token });
      expect(res.status).toBe(401);
      expect(res.headers.get("set-cookie")).toBeNull();
      expect(await res.text()).toContain("not a valid management token");
    }
  });

  test("the right token opens a session: hashed at rest, HttpOnly SameSite=Strict cookie on /admin", async () => {
    const res = await postForm("/admin/login", { token: ADMIN_TOKEN, next: "/admin/spend" });
    expect(res.status).toBe(303);
    expect(res.headers.get("location")).toBe("/admin/spend");
    const cookie = res.headers.get("set-cookie")!;
    expect(cookie).toMatch(/^kb_session=[A-Za-z0-9_-]{43};/);
    expect(cookie).toContain("HttpOnly");
    expect(cookie).toContain("SameSite=Strict");
    expect(cookie).toContain("Path=/admin");
    expect(cookie).toContain("Max-Age=43200");
    expect(cookie).not.toContain("Secure"); // plain http to loopback

    const id = cookie.slice("kb_session=".length, cookie.indexOf(";"));
    const rows = await dbRows(kb.services, "SELECT * FROM admin_sessions");
    expect(rows.some((r) => r.id_hash === sha256Hex(id))).toBe(true);
    expect(JSON.stringify(rows)).not.toContain(id);
  });

  test("Secure is added behind an https proxy; next never leaves /admin", async () => {
    const res = await postForm("/admin/login", { token: ADMIN_TOKEN, next: "//evil.example/admin/x" }, { "x-forwarded-proto": "https" });
    expect(res.headers.get("set-cookie")).toContain("; Secure");
    expect(res.headers.get("location")).toBe("/admin/keys");
    for (const next of ["https://evil.example/", "/admin/\\evil", "/vault/keys"]) {
      expect((await postForm("/admin/login", { token: ADMIN_TOKEN, next })).headers.get("location")).toBe("/admin/keys");
    }
  });

  test("a signed-in visit to /admin goes to the keys page; logout ends the session", async () => {
    const s = await login();
    const home = await get("/admin", { headers: { cookie: s.cookie } });
    expect(home.status).toBe(303);
    expect(home.headers.get("location")).toBe("/admin/keys");
    const out = await postForm("/admin/logout", { _csrf: s.csrf }, { cookie: s.cookie });
    expect(out.headers.get("set-cookie")).toContain("Max-Age=0");
    expect((await get("/admin/keys", { headers: { cookie: s.cookie } })).status).toBe(303);
  });
});

describe("CSRF: every change needs the session's token", () => {
  let s: Session;
  beforeAll(async () => {
    s = await login();
  });

  const withoutToken = async (method: string, path: string, fields: Record<string, string>, csrf?: string) => {
    const headers: Record<string, string> = { cookie: s.cookie, "content-type": "application/x-www-form-urlencoded" };
    if (csrf !== undefined) headers["x-csrf-token"] = csrf;
    return fetch(kb.url + path, { method, headers, redirect: "manual", body: method === "DELETE" ? undefined : new URLSearchParams(fields).toString() });
  };

  test("issuing a key without (or with a wrong) token is 403 and issues nothing", async () => {
    const before = await countKeys();
    const form = { vendor: "stripe", agent_run_label: "csrf-test", daily_usd_cap: "5", allowed_endpoints: "POST /v1/payment_intents", expires_in: "1h" };
    for (const csrf of [undefined, "", "forged-token", s.csrf + "x"]) {
      const res = await withoutToken("POST", "/admin/keys", form, csrf);
      expect(res.status).toBe(403);
      expect(await res.text()).not.toContain("vk_");
    }
    // The token of another session does not count either.
    const other = await login();
    expect((await withoutToken("POST", "/admin/keys", form, other.csrf)).status).toBe(403);
    expect(await countKeys()).toBe(before);
  });

  test("revoking a key or a run without the token is 403 and the keys stay active", async () => {
    const k = await kb.issueKey(seedKeyBody({ agent_run_label: "csrf-revoke" }));
    expect((await withoutToken("DELETE", `/admin/keys/${k.key_id}`, {})).status).toBe(403);
    expect((await withoutToken("POST", "/admin/runs/revoke", { agent_run_label: "csrf-revoke" })).status).toBe(403);
    expect(await keyStatus(k.key_id)).toBe("active");
  });

  test("rotating a secret, testing a connection or logging out without the token is 403", async () => {
    const before = await kb.services.secrets.status("resend");
    expect((await withoutToken("POST", "/admin/vendors/resend", { api_key: "re_attacker_key_123456" })).status).toBe(403);
    expect(await kb.services.secrets.status("resend")).toEqual(before);
    expect((await withoutToken("POST", "/admin/vendors/stripe/test", {})).status).toBe(403);
    expect((await withoutToken("POST", "/admin/logout", {})).status).toBe(403);
    expect((await get("/admin/keys", { headers: { cookie: s.cookie } })).status).toBe(200);
  });

  test("an htmx request without the token is told so in the flash area", async () => {
    const res = await fetch(kb.url + "/admin/runs/revoke", {
      method: "POST",
      headers: { cookie: s.cookie, "hx-request": "true", "content-type": "application/x-www-form-urlencoded" },
      body: "agent_run_label=x",
    });
    expect(res.status).toBe(403);
    expect(res.headers.get("hx-retarget")).toBe("#flash");
    expect(await res.text()).toContain("CSRF");
  });
});

describe("keys page", () => {
  let s: Session;
  beforeAll(async () => {
    s = await login();
  });

  test("revoke one key (htmx DELETE) answers the updated row, and the API sees it revoked", async () => {
    const k = await kb.issueKey(seedKeyBody({ agent_run_label: "admin-revoke-one" }));
    const res = await get(`/admin/keys/${k.key_id}`, { method: "DELETE", headers: as(s, true) });
    expect(res.status).toBe(200);
    const row = await res.text();
    expect(row).toStartWith(`<tr id="key-${k.key_id}"`);
    expect(row).toContain("revoked");
    expect(await countElements(row, "form[hx-post$='/revoke']")).toBe(0);
    // The acknowledgement goes to the toast out of band; the row itself stays where it was.
    expect(await countElements(row, '#flash[hx-swap-oob="innerHTML"]')).toBe(1);
    expect(row).toContain("admin-revoke-one");
    expect(await keyStatus(k.key_id)).toBe("revoked");
    // Unknown keys are a message, not a crash.
    expect((await get("/admin/keys/key_nope", { method: "DELETE", headers: as(s, true) })).status).toBe(404);
  });

  test("revoke a whole run with a plain form (hidden CSRF field)", async () => {
    const label = "admin-revoke-run-" + Date.now();
    const a = await kb.issueKey(seedKeyBody({ agent_run_label: label }));
    const b = await kb.issueKey(seedKeyBody({ agent_run_label: label }));
    const other = await kb.issueKey(seedKeyBody({ agent_run_label: label + "-other" }));
    const res = await postForm("/admin/runs/revoke", { _csrf: s.csrf, agent_run_label: label }, { cookie: s.cookie });
    expect(res.status).toBe(303);
    expect(await keyStatus(a.key_id)).toBe("revoked");
    expect(await keyStatus(b.key_id)).toBe("revoked");
    expect(await keyStatus(other.key_id)).toBe("active");

    const again = await postForm("/admin/runs/revoke", { agent_run_label: label }, as(s, true));
    expect(await again.text()).toContain("already revoked");
  });

  test("the issue form goes through the API's validation, errors shown per field", async () => {
    const before = await countKeys();
    const res = await postForm(
      "/admin/keys",
      { vendor: "stripe", agent_run_label: "", daily_usd_cap: "lots", allowed_endpoints: "POST /v1/payment_intents\nFETCH", expires_in: "forever" },
      as(s, true),
    );
    expect(res.status).toBe(422);
    const html = await res.text();
    expect(html).toContain("agent_run_label must not be empty");
    expect(html).toContain("daily_usd_cap must be a number of US dollars");
    expect(html).toContain("Line 2:");
    expect(html).toContain("expires_in must be a positive duration");
    expect(await countElements(html, '[aria-invalid="true"]')).toBe(4);
    expect(html).not.toContain("vk_");
    expect(await countKeys()).toBe(before);
  });

  test("a valid form issues a key and shows the vault key once", async () => {
    const label = "admin-issued-" + Date.now();
    const res = await postForm(
      "/admin/keys",
      {
        vendor: "stripe",
        agent_run_label: label,
        daily_usd_cap: "12.5",
        total_usd_cap: "",
        allowed_endpoints: "POST /v1/payment_intents\r\n\r\nGET /v1/customers/*\r\n",
        expires_in: "2h",
        require_idempotency_key: "true",
        metadata: '{"team": "billing"}',
      },
      as(s, true),
    );
    expect(res.status).toBe(200);
    const html = await res.text();
    const vaultKey = /value="(vk_[A-Za-z0-9_-]{43})"/.exec(html)?.[1];
    expect(vaultKey).toBeString();
    const listed = (await kb.api("GET", `/vault/keys?label=${encodeURIComponent(label)}`)).json.data;
    expect(listed).toHaveLength(1);
    expect(listed[0]).toMatchObject({
      daily_usd_cap: 12.5,
      allowed_endpoints: ["POST /v1/payment_intents", "GET /v1/customers/*"],
      require_idempotency_key: true,
      metadata: { team: "billing" },
    });
    // Shown once: the keys page never carries it again.
    const page = await (await get("/admin/keys", { headers: { cookie: s.cookie } })).text();
    expect(page).toContain(listed[0].key_id);
    expect(page).not.toContain(vaultKey!);
  });

  test("without JavaScript the forms still work: issue shows the key, rotate redirects back", async () => {
    const label = "admin-plain-form-" + Date.now();
    const res = await postForm(
      "/admin/keys",
      { _csrf: s.csrf, vendor: "resend", agent_run_label: label, daily_usd_cap: "1", allowed_endpoints: "POST /emails", expires_in: "30m" },
      { cookie: s.cookie },
    );
    expect(res.status).toBe(200);
    const html = await res.text();
    expect(html).toStartWith("<!doctype html>");
    expect(html).toMatch(/value="vk_[A-Za-z0-9_-]{43}"/);
    const rotated = await postForm("/admin/vendors/resend", { _csrf: s.csrf, api_key: "re_plain_form_secret_0001" }, { cookie: s.cookie });
    expect(rotated.status).toBe(303);
    expect(rotated.headers.get("location")).toBe("/admin/vendors");
  });

  test("tabs and filters narrow the list; counts follow the filter; a just-revoked key stays in place", async () => {
    const label = "admin-filter-" + Date.now();
    const active = await kb.issueKey(seedKeyBody({ agent_run_label: label }));
    const revoked = await kb.issueKey(seedKeyBody({ agent_run_label: label, vendor: "resend", allowed_endpoints: ["POST /emails"] }));
    await kb.api("DELETE", `/vault/keys/${revoked.key_id}`);
    const table = async (q: string) => (await get(`/admin/keys/table?${q}`, { headers: as(s, true, false) })).text();
    const activeTab = await table(`status=active&label=${encodeURIComponent(label)}`);
    expect(activeTab).toContain(active.key_id);
    // Revoked a moment ago: still on the Active tab, marked revoked, so the rows do not shift under the pointer.
    expect(activeTab).toContain(revoked.key_id);
    expect(await countElements(activeTab, `#key-${revoked.key_id}.inactive`)).toBe(1);
    expect(activeTab).toMatch(/Active keys<span class="count">1<\/span>/);
    expect(activeTab).toMatch(/Revoked<span class="count">1<\/span>/);
    const revokedTab = await table(`status=revoked&label=${encodeURIComponent(label)}`);
    expect(revokedTab).toContain(revoked.key_id);
    expect(revokedTab).not.toContain(active.key_id);
    const resendOnly = await table(`status=all&vendor=resend&label=${encodeURIComponent(label)}`);
    expect(resendOnly).toContain(revoked.key_id);
    expect(resendOnly).not.toContain(active.key_id);
    expect(resendOnly).toMatch(/All keys<span class="count">1<\/span>/);
  });
});

describe("runs: find a run by the start of its label, see its spend, revoke it on its row", () => {
  let s: Session;
  const prefix = `oncall-${Date.now()}/`;
  let fan: { key_id: string; vault_key: string };
  let second: { key_id: string; vault_key: string };
  beforeAll(async () => {
    s = await login();
    await kb.services.secrets.set("stripe", { secret_key: "sk_test_runs_view_0000000000" });
    // Two keys in one run, one key in another run with the same prefix, one elsewhere.
    fan = await kb.issueKey(seedKeyBody({ agent_run_label: prefix + "a", daily_usd_cap: 100 }));
    second = await kb.issueKey(seedKeyBody({ agent_run_label: prefix + "a", daily_usd_cap: 50 }));
    await kb.issueKey(seedKeyBody({ agent_run_label: prefix + "b", daily_usd_cap: 10 }));
    await kb.issueKey(seedKeyBody({ agent_run_label: "elsewhere-" + prefix }));
  });
  const runsTable = async (label: string) => (await get(`/admin/keys/table?status=runs&label=${encodeURIComponent(label)}`, { headers: as(s, true, false) })).text();

  test("label=prefix/* lists both runs of the prefix and nothing else; exact label lists one", async () => {
    const html = await runsTable(prefix + "*");
    expect(await countElements(html, "table.runs tbody tr")).toBe(2);
    expect(html).toContain(`${prefix}a`);
    expect(html).toContain(`${prefix}b`);
    expect(html).not.toContain("elsewhere-");
    expect(html).toMatch(/Runs<span class="count">2<\/span>/);
    expect(html).toMatch(/Active keys<span class="count">3<\/span>/);
    expect(await countElements(await runsTable(prefix + "a"), "table.runs tbody tr")).toBe(1);
    // An exact label that matches nothing offers the prefix search.
    const none = await runsTable(prefix.slice(0, -1));
    expect(none).toContain("No runs for label");
    expect(none).toContain(encodeURIComponent(prefix.slice(0, -1) + "*").replace(/%2F/g, "%2F"));
  });

  test("a run row sums its keys' caps, and Revoke run names the label and the number of live keys", async () => {
    const html = await runsTable(prefix + "a");
    expect(html).toContain("$0.00</strong> <span class=\"muted\">of $150.00");
    expect(html).toContain("2 keys");
    const confirm = /hx-confirm="([^"]+)"/.exec(html)?.[1] ?? "";
    expect(confirm).toContain(`${prefix}a`);
    expect(confirm).toContain("2 live keys");
    expect(html).toContain(`href="/admin/keys/${fan.key_id > second.key_id ? fan.key_id : second.key_id}/edit"`);
  });

  test("revoking from the row answers the same row, now revoked with its spend, plus an acknowledgement", async () => {
    const before = await runsTable(prefix + "a");
    const rowId = /<tr id="(run-[a-z0-9]+)"/.exec(before)?.[1];
    const res = await postForm("/admin/runs/revoke", { agent_run_label: prefix + "a" }, as(s, true));
    expect(res.status).toBe(200);
    const html = await res.text();
    expect(html).toStartWith(`<tr id="${rowId}"`);
    expect(html).toContain(">revoked<");
    expect(html).toContain("of $150.00");
    expect(await countElements(html, "form[hx-post='/admin/runs/revoke']")).toBe(0);
    expect(html).toContain(`Revoked 2 keys of run “${prefix}a”`);
    expect(await keyStatus(fan.key_id)).toBe("revoked");
    // The list still shows the run, in the same place, as revoked.
    const after = await runsTable(prefix + "*");
    expect(after.indexOf(`${prefix}a`)).toBeGreaterThan(-1);
    expect(await countElements(after, `#${rowId}.inactive`)).toBe(1);
    // The next call with its key is refused, and the audit page shows it with the status the client got.
    const refused = await fetch(`${kb.url}/stripe/v1/payment_intents`, {
      method: "POST",
      headers: { authorization: `Bearer ${fan.vault_key}`, "content-type": "application/x-www-form-urlencoded" },
      body: "amount=2900&currency=usd",
    });
    expect(refused.status).toBe(401);
    const audit = await (await get(`/admin/audit?label=${encodeURIComponent(prefix + "*")}`, { headers: { cookie: s.cookie } })).text();
    expect(audit).toContain(">revoked<");
    expect(audit).toMatch(/class="status by-keybrake"[^>]*>401</);
    expect(audit).toContain("This filter matches: 1 call · $0.00 spent · 1 refused · 0 cap hits");
  });
});

describe("client-written text is escaped", () => {
  let s: Session;
  let keyId: string;
  beforeAll(async () => {
    s = await login();
    const k = await kb.issueKey(seedKeyBody({ agent_run_label: XSS_LABEL }));
    keyId = k.key_id;
    await kb.api("DELETE", `/vault/keys/${k.key_id}`);
    // A call with the revoked key leaves an audit row carrying the label.
    const refused = await fetch(`${kb.url}/stripe/v1/payment_intents`, { method: "POST", headers: { authorization: `Bearer ${k.vault_key}` } });
    expect(refused.status).toBe(401);
  });

  const pages = () => [
    `/admin/keys?status=all`,
    `/admin/keys/table?status=revoked`,
    `/admin/audit`,
    `/admin/audit?label=${encodeURIComponent(XSS_LABEL)}`,
    `/admin/spend`,
    `/admin/spend?label=${encodeURIComponent(XSS_LABEL)}`,
  ];

  test("a label like <img src=x onerror=alert(1)> renders as text, never as an element", async () => {
    for (const path of pages()) {
      const html = await (await get(path, { headers: { cookie: s.cookie } })).text();
      expect(`${path}: ${await countElements(html, "img")}`).toBe(`${path}: 0`);
      if (!path.startsWith("/admin/spend")) expect(html).toContain("&lt;img src=x onerror=alert(1)&gt;");
    }
    const audit = await (await get(`/admin/audit?label=${encodeURIComponent(XSS_LABEL)}`, { headers: { cookie: s.cookie } })).text();
    expect(audit).toContain(keyId);
    expect(audit).toContain("revoked");
  });

  test("the audit row's detail and the CSV export keep it as data", async () => {
    const row = (await dbRow<{ id: number }>(kb.services, "SELECT id FROM audit_log WHERE key_id = ? ORDER BY id DESC", keyId))!;
    const detail = await (await get(`/admin/audit/${row.id}`, { headers: as(s, true, false) })).text();
    expect(await countElements(detail, "img")).toBe(0);
    expect(detail).toContain("&lt;img src=x onerror=alert(1)&gt;");
    const csv = await get(`/admin/audit/export.csv?key_id=${keyId}`, { headers: { cookie: s.cookie } });
    expect(csv.headers.get("content-type")).toContain("text/csv");
    const text = await csv.text();
    expect(text.split("\r\n")[0]).toStartWith("id,time,key_id,agent_run_label");
    expect(text).toContain(XSS_LABEL);
  });
});

describe("audit, spend and vendor pages", () => {
  let s: Session;
  beforeAll(async () => {
    s = await login();
  });

  test("a bad audit filter is shown on the form, not thrown as JSON", async () => {
    const res = await get("/admin/audit?outcome=exploded&since=yesterday", { headers: { cookie: s.cookie } });
    expect(res.status).toBe(400);
    expect(res.headers.get("content-type")).toContain("text/html");
    const html = await res.text();
    expect(html).toContain("since must be an ISO 8601 time");
    expect(await countElements(html, '[aria-invalid="true"]')).toBe(2);
  });

  test("the audit export is the same file as GET /vault/audit?format=csv", async () => {
    const k = await kb.issueKey(seedKeyBody({ agent_run_label: "export-same" }));
    await kb.api("DELETE", `/vault/keys/${k.key_id}`);
    for (let i = 0; i < 3; i++) await fetch(`${kb.url}/stripe/v1/payment_intents`, { method: "POST", headers: { authorization: `Bearer ${k.vault_key}` } });
    const admin = await (await get(`/admin/audit/export.csv?label=export-same`, { headers: { cookie: s.cookie } })).text();
    const api = await fetch(`${kb.url}/vault/audit?format=csv&label=export-same`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    expect(admin).toBe(await api.text());
    expect(admin.trim().split("\r\n")).toHaveLength(4);
  });

  test("the spend page draws an SVG chart with no script or inline style (and says so when there is nothing to draw)", async () => {
    const emptyWindow = await (await get("/admin/spend?days=1&label=no-such-run", { headers: { cookie: s.cookie } })).text();
    expect(await countElements(emptyWindow, "svg[role=img]")).toBe(0);
    expect(emptyWindow).toContain("No settled spend in the last day.");
    expect(emptyWindow).not.toContain("$0.000001");
    await kb.services.secrets.set("stripe", { secret_key: "sk_test_spend_chart_00000000" });
    const k = await kb.issueKey(seedKeyBody({ agent_run_label: "spend-chart" }));
    await dbRows(
      kb.services,
      "INSERT INTO audit_log (ts, key_id, agent_run_label, vendor, method, path, outcome, vendor_status, estimated_micros, settled_micros, ledger_state) VALUES (?, ?, 'spend-chart', 'stripe', 'POST', '/v1/payment_intents', 'forwarded', 200, 29000000, 29000000, 'settled')",
      Date.now(),
      k.key_id,
    );
    const html = await (await get("/admin/spend?label=spend-chart", { headers: { cookie: s.cookie } })).text();
    expect(await countElements(html, "svg[role=img]")).toBe(2);
    // The run's chart draws its cap as a line, labelled.
    expect(await countElements(html, "line.cap-line")).toBe(1);
    expect(html).toContain("daily cap $500.00");
    for (const d of ["1", "7", "30", "90"]) expect(html).toContain(`days=${d}`);
    expect(await countElements(html, "[style]")).toBe(0);
    expect(await countElements(html, "script:not([src])")).toBe(0);
  });

  test("rotating a secret goes through the API's validation and shows only the last 4", async () => {
    const bad = await postForm("/admin/vendors/twilio", { account_sid: "not-a-sid", auth_token: "" }, as(s, true));
    expect(bad.status).toBe(422);
    const badHtml = await bad.text();
    expect(badHtml).toContain("account_sid must be AC followed by 32 hex characters");
    expect((await kb.services.secrets.status("twilio")).configured).toBe(false);

    const secret = "re_rotated_secret_value_9876";
    const ok = await postForm("/admin/vendors/resend", { api_key: secret }, as(s, true));
    expect(ok.status).toBe(200);
    const okHtml = await ok.text();
    expect(okHtml).toContain("•••• 9876");
    expect(okHtml).not.toContain(secret);
    expect(await kb.services.secrets.get("resend")).toEqual({ api_key: secret });
    const page = await (await get("/admin/vendors", { headers: { cookie: s.cookie } })).text();
    expect(page).not.toContain(secret);
  });

  test("test connection with no secret says so", async () => {
    const res = await postForm("/admin/vendors/twilio/test", {}, as(s, true));
    expect(res.status).toBe(200);
    expect(await res.text()).toContain("No secret is stored");
  });
});

describe("the issue form as people type it", () => {
  let s: Session;
  beforeAll(async () => {
    s = await login();
  });
  const base = { vendor: "stripe", agent_run_label: "form-typing", daily_usd_cap: "10", allowed_endpoints: "POST /v1/payment_intents", expires_in: "4h" };

  const accepted: [name: string, over: Record<string, string>, want: Record<string, unknown>][] = [
    ["a dollar sign", { daily_usd_cap: "$500" }, { daily_usd_cap: 500 }],
    ["thousands separators", { daily_usd_cap: "$1,250.50", total_usd_cap: "2,000" }, { daily_usd_cap: 1250.5, total_usd_cap: 2000 }],
    ["a sub-cent amount", { daily_usd_cap: "$ 0.0083" }, { daily_usd_cap: 0.0083 }],
  ];
  for (const [name, over, want] of accepted) {
    test(`accepted: ${name}`, async () => {
      const label = `form-typing-${Date.now()}-${Math.random()}`;
      const res = await postForm("/admin/keys", { ...base, ...over, agent_run_label: label }, as(s, true));
      expect(res.status).toBe(200);
      const listed = (await kb.api("GET", `/vault/keys?label=${encodeURIComponent(label)}`)).json.data;
      expect(listed[0]).toMatchObject(want);
    });
  }

  const refused: [name: string, over: Record<string, string>, messages: string[]][] = [
    ["a duration over the maximum, in days", { expires_in: "40d" }, ["expires_in must be at most 30d"]],
    ["a duration over the maximum, in hours", { expires_in: "1000h" }, ["expires_in must be at most 720h"]],
    ["a comma that is not a thousands separator", { daily_usd_cap: "1,25" }, ["daily_usd_cap must be a number of US dollars"]],
    [
      "an endpoint with Keybrake's /stripe prefix",
      { allowed_endpoints: "GET /v1/customers/*\nPOST /stripe/v1/payment_intents" },
      ["Line 2:", "drop the /stripe prefix", "POST /v1/payment_intents"],
    ],
    [
      "every bad field at once, the form's own (metadata) with the API's",
      { agent_run_label: "", daily_usd_cap: "lots", expires_in: "40d", metadata: "{not json" },
      ["agent_run_label must not be empty", "daily_usd_cap must be a number of US dollars", "expires_in must be at most 30d", "metadata must be a JSON object", "Fix the 4 fields marked below"],
    ],
  ];
  for (const [name, over, messages] of refused) {
    test(`refused, every message shown: ${name}`, async () => {
      const before = await countKeys();
      const res = await postForm("/admin/keys", { ...base, ...over }, as(s, true));
      expect(res.status).toBe(422);
      const html = (await res.text()).replaceAll("&quot;", '"');
      for (const m of messages) expect(html).toContain(m);
      expect(await countKeys()).toBe(before);
    });
  }

  test("the API refuses a vendor-prefixed endpoint too, naming the entry", async () => {
    const r = await kb.api("POST", "/vault/keys", seedKeyBody({ allowed_endpoints: ["POST /v1/refunds", "POST /stripe/v1/payment_intents"] }));
    expect(r.status).toBe(400);
    expect(r.json.error.details).toEqual([{ field: "allowed_endpoints.1", message: expect.stringContaining("drop the /stripe prefix") }]);
  });

  test("a vendor with no secret is warned about on the form and on the issued key", async () => {
    expect((await kb.services.secrets.status("twilio")).configured).toBe(false);
    const page = await (await get("/admin/keys", { headers: { cookie: s.cookie } })).text();
    expect(page).toMatch(/No secret is configured for [a-z, ]*twilio/);
    const res = await postForm(
      "/admin/keys",
      { ...base, vendor: "twilio", allowed_endpoints: "POST /2010-04-01/Accounts/*/Messages.json", agent_run_label: "form-no-secret" },
      as(s, true),
    );
    expect(res.status).toBe(200);
    expect(await res.text()).toContain("twilio has no secret configured yet");
  });
});

describe("admin bodies are bounded before they are read", () => {
  const big = "x".repeat(70 * 1024);
  test("a login POST over 64 KiB is refused with 413 and opens no session", async () => {
    const sessions = async () => (await dbRow<{ n: number }>(kb.services, "SELECT count(*) AS n FROM admin_sessions"))!.n;
    const before = await sessions();
    const res = await postForm("/admin/login", { token: ADMIN_TOKEN, pad: big });
    expect(res.status).toBe(413);
    expect(res.headers.get("set-cookie")).toBeNull();
    expect(await sessions()).toBe(before);
  });

  test("every admin form route, the other admin plugins' included, refuses an oversized body with 413 and changes nothing", async () => {
    const s = await login();
    const k = await kb.issueKey(seedKeyBody({ agent_run_label: "bounded-body" }));
    const routes = ["/admin/keys", `/admin/keys/${k.key_id}/revoke`, "/admin/runs/revoke", "/admin/vendors/resend", "/admin/tokens", `/admin/keys/${k.key_id}/edit`, "/admin/budgets", "/admin/webhooks", "/admin/logout"];
    const before = await countKeys();
    for (const path of routes) {
      const res = await postForm(path, { _csrf: s.csrf, agent_run_label: "bounded-body", pad: big }, { cookie: s.cookie });
      expect(`${path} ${res.status}`).toBe(`${path} 413`);
    }
    expect(await countKeys()).toBe(before);
    expect(await keyStatus(k.key_id)).toBe("active");
  });

  test("a streamed body with no Content-Length is cut off at the limit too", async () => {
    const s = await login();
    const chunk = new TextEncoder().encode("a".repeat(16 * 1024));
    let sent = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(c) {
        if (sent++ < 8) c.enqueue(chunk);
        else c.close();
      },
    });
    const res = await fetch(`${kb.url}/admin/keys`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded", ...as(s, true) },
      body,
      // @ts-expect-error Bun's fetch streams a ReadableStream body
      duplex: "half",
    });
    expect(res.status).toBe(413);
  });
});

describe("audit pages: what the client saw, what was spent, account ids masked", () => {
  let s: Session;
  const label = `audit-view-${Date.now()}`;
  const SID = "AC" + "0123456789abcdef".repeat(2);
  beforeAll(async () => {
    s = await login();
    const key = await kb.issueKey(seedKeyBody({ agent_run_label: label, vendor: "twilio", allowed_endpoints: ["GET /2010-04-01/Accounts/*/Messages.json"] }));
    await kb.api("DELETE", `/vault/keys/${key.key_id}`);
    // Refused before the vendor (revoked): no vendor status, no money.
    await fetch(`${kb.url}/twilio/2010-04-01/Accounts/${SID}/Messages.json`, {
      method: "POST",
      headers: { authorization: "Basic " + btoa(`${SID}:${key.vault_key}`), "content-type": "application/x-www-form-urlencoded" },
      body: "To=%2B15005550006&From=%2B15005550001&Body=hi",
    });
  });

  test("the Twilio Account SID shows only its last 4 in the page, the API and the CSV", async () => {
    const page = await (await get(`/admin/audit?label=${label}`, { headers: { cookie: s.cookie } })).text();
    const api = JSON.stringify((await kb.api("GET", `/vault/audit?label=${label}`)).json);
    const csv = await (await get(`/admin/audit/export.csv?label=${label}`, { headers: { cookie: s.cookie } })).text();
    for (const text of [page, api, csv]) {
      expect(text).not.toContain(SID);
      expect(text).toContain("/Accounts/••••cdef/Messages.json");
    }
  });

  test("a refusal shows the status the client got (401, from Keybrake) and no money in the Cost column", async () => {
    const rows = await (await get(`/admin/audit/rows?label=${label}`, { headers: as(s, true, false) })).text();
    expect(await countElements(rows, "table.audit tbody tr")).toBe(1);
    expect(rows).toMatch(/class="status by-keybrake"[^>]*>401</);
    expect(rows).toContain("Refused: nothing spent");
    expect(rows).not.toContain("est.");
    expect(rows).toContain("This filter matches: 1 call · $0.00 spent · 1 refused · 0 cap hits");
    const id = /id="audit-(\d+)"/.exec(rows)![1];
    const detail = await (await get(`/admin/audit/${id}`, { headers: as(s, true, false) })).text();
    expect(detail).toStartWith(`<tr class="detail-row" id="audit-detail-${id}"`);
    expect(detail).toContain("401, from Keybrake (the vendor was not called)");
    expect(detail).not.toContain("Ledger");
  });

  test("the live tail polls the rows fragment; paging back turns it off", async () => {
    const live = await (await get(`/admin/audit?label=${label}&live=1`, { headers: { cookie: s.cookie } })).text();
    expect(await countElements(live, `#audit-live[hx-get^="/admin/audit/rows"][hx-trigger="every 3s"]`)).toBe(1);
    const paged = await (await get(`/admin/audit?label=${label}&live=1&cursor=1`, { headers: { cookie: s.cookie } })).text();
    expect(await countElements(paged, "#audit-live[hx-trigger]")).toBe(0);
  });
});

test("a cap refusal says its amounts in the one money format ($29.00, not $29.000000)", async () => {
  const k = await kb.issueKey(seedKeyBody({ agent_run_label: "money-format", daily_usd_cap: 10.5 }));
  const res = await fetch(`${kb.url}/stripe/v1/payment_intents`, {
    method: "POST",
    headers: { authorization: `Bearer ${k.vault_key}`, "content-type": "application/x-www-form-urlencoded" },
    body: "amount=2900&currency=usd",
  });
  expect(res.status).toBe(429);
  expect(((await res.json()) as any).error.message).toBe("Spend cap reached: this call would cost $29.00 and $10.50 is left.");
  // Headers stay exact for machines.
  expect(res.headers.get("x-keybrake-remaining-usd")).toBe("10.500000");
});

test("runs page newest first and continue from the cursor without repeating or skipping a run", async () => {
  const prefix = `paging-${Date.now()}/`;
  for (const run of ["a", "b", "c"]) await kb.issueKey(seedKeyBody({ agent_run_label: prefix + run }));
  await kb.issueKey(seedKeyBody({ agent_run_label: prefix + "a" })); // a's newest key is now the newest of all
  const first = await kb.services.runs.listRuns({ label: prefix + "*", limit: 2 });
  expect(first.runs.map((r) => r.agent_run_label)).toEqual([prefix + "a", prefix + "c"]);
  expect(first.nextCursor).toBeString();
  const second = await kb.services.runs.listRuns({ label: prefix + "*", limit: 2, cursor: first.nextCursor! });
  expect(second.runs.map((r) => r.agent_run_label)).toEqual([prefix + "b"]);
  expect(second.nextCursor).toBeNull();
  expect(first.runs[0]).toMatchObject({ keys: 2, active_keys: 2, status: "active", daily_cap_usd: 1000, calls: 0, last_call_at: null });
});
