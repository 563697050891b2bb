import { Elysia } from "elysia";
import { ADMIN_SESSION_TTL_MS, csrfMatches } from "../domain/admin-sessions.ts";
import { parseAuditQuery, presentAudit, type AuditFilter } from "../domain/audit.ts";
import { presentKey } from "../domain/keys.ts";
import { cumulativeSpend, dailySeries } from "../domain/spend-series.ts";
import { utcDay } from "../domain/time.ts";
import { checkVendorConnection } from "../domain/vendor-check.ts";
import type { VaultKeyRow } from "../db/schema.ts";
import { ApiError } from "../errors.ts";
import type { Services } from "../services.ts";
import { ADAPTERS } from "../vendors/index.ts";
import { VENDORS, type VendorName } from "../vendors/types.ts";
import { ASSETS, type AssetName } from "../../views/assets.ts";
import { AuditDetail, AuditNotFound, AuditPage, type AuditFilterValues } from "../../views/audit.tsx";
import { FlashMessage } from "../../views/components.tsx";
import { href } from "../../views/format.ts";
import { IssuePanel, KeyRow, KeysPage, KeysTable, RunRevoked, type IssueFormState, type KeysFilter, type KeyTab } from "../../views/keys.tsx";
import { LoginPage } from "../../views/login.tsx";
import { SpendPage } from "../../views/spend.tsx";
import { ConnectionResult, VendorCard, VendorsPage } from "../../views/vendors.tsx";
import { auditExportResponse } from "./audit-export.ts";
import { adminGovernanceRoutes } from "./admin-governance.ts";
import { fieldErrorsOf, issueBodyFromForm, issueFormValues, secretFromForm, utcFromLocalInput, type FieldErrors } from "./admin-forms.ts";
import {
  ADMIN_HEADERS,
  CSRF_FIELD,
  CSRF_HEADER,
  field,
  fragment,
  html,
  render,
  isHtmx,
  queryFilters,
  readCookie,
  redirect,
  safeNext,
  SESSION_COOKIE,
  sessionCookie,
} from "./admin-kit.ts";

const KEY_TABS: readonly KeyTab[] = ["active", "revoked", "expired", "all"];
const AUDIT_FILTER_FIELDS = ["label", "key_id", "vendor", "outcome", "since", "until"] as const;
const PAGE_SIZE = 50;
const SPEND_DAYS = 30;

const isVendor = (v: string | undefined): v is VendorName => (VENDORS as readonly string[]).includes(v ?? "");
const isInvalidInput = (e: unknown): e is ApiError => e instanceof ApiError && e.code === "invalid_request";

/** A message for the page's flash area, wherever the htmx request meant to swap. */
function flash(status: number, tone: "ok" | "danger", text: string): Response {
  return fragment(FlashMessage({ tone, text }), status, { "hx-retarget": "#flash", "hx-reswap": "innerHTML" });
}

/**
 * The admin pages (SPEC §6): server-rendered HTML over the same services as the
 * management API. Every route but login and the static assets needs a session;
 * every POST/DELETE also needs the session's CSRF token.
 */
export function adminRoutes(s: Services, proxyBaseUrl: () => string) {
  const keyView = (row: VaultKeyRow, now: number) => ({ ...presentKey(row, now), ...s.keys.spend(row, now) });

  const keysTable = (f: KeysFilter, now = Date.now()) => {
    const { rows, nextCursor } = s.keys.list(
      { label: f.label, vendor: isVendor(f.vendor) ? f.vendor : undefined, status: f.status === "all" ? undefined : f.status, cursor: f.cursor, limit: PAGE_SIZE },
      now,
    );
    return { filter: f, counts: s.keys.countByStatus(now), keys: rows.map((r) => keyView(r, now)), nextCursor, now };
  };

  const keysFilter = (request: Request): KeysFilter => {
    const q = queryFilters(request);
    const status = KEY_TABS.find((t) => t === q.status) ?? "active";
    return { status, label: q.label, vendor: isVendor(q.vendor) ? q.vendor : undefined, cursor: q.cursor };
  };

  /** The issue form through KeyService.issue: the new key, or the form back with its errors. */
  const issueFromForm = (body: unknown): IssueFormState => {
    const values = issueFormValues(body);
    const { body: apiBody, errors } = issueBodyFromForm(values);
    if (Object.keys(errors).length) return { values, errors };
    try {
      const { row, vaultKey } = s.keys.issue(apiBody);
      return { values: { vendor: row.vendor }, errors: {}, issued: { key: keyView(row, Date.now()), vaultKey, proxyBaseUrl: proxyBaseUrl() } };
    } catch (e) {
      if (!isInvalidInput(e)) throw e;
      return { values, errors: fieldErrorsOf(e) };
    }
  };

  const keysPage = (csrf: string, f: KeysFilter, issue: IssueFormState, status = 200) =>
    html(KeysPage({ csrf, table: keysTable(f), issue }), status);

  /** The audit filter from the query string: the typed values, and the parsed filter (or why it does not parse). */
  const auditFilter = (request: Request, extra: Record<string, string> = {}) => {
    const q = queryFilters(request);
    const values: AuditFilterValues = {};
    for (const k of AUDIT_FILTER_FIELDS) values[k] = q[k];
    const query: Record<string, string | undefined> = { ...values, ...extra };
    if (query.since) query.since = utcFromLocalInput(query.since);
    if (query.until) query.until = utcFromLocalInput(query.until);
    try {
      return { values, cursor: q.cursor, filter: parseAuditQuery(query) as AuditFilter | null, errors: {} as FieldErrors };
    } catch (e) {
      if (!isInvalidInput(e)) throw e;
      return { values, cursor: q.cursor, filter: null, errors: fieldErrorsOf(e) };
    }
  };

  const vendorCards = () => VENDORS.map((v) => ({ status: s.secrets.status(v), baseUrl: s.config.baseUrls[v] }));

  return (
    new Elysia({ name: "admin", prefix: "/admin" })
      // Static files first: they carry their own (long) cache headers and need no session.
      .get("/assets/:name", ({ params }) => {
        const asset = ASSETS[params.name as AssetName];
        if (!Object.hasOwn(ASSETS, params.name) || !asset) return new Response("Not found", { status: 404 });
        return new Response(asset.body, {
          headers: { "content-type": asset.type, "cache-control": "public, max-age=31536000, immutable", "x-content-type-options": "nosniff" },
        });
      })
      .onTransform(({ set }) => {
        Object.assign(set.headers, ADMIN_HEADERS);
      })
      .get("", ({ request }) => {
        if (s.adminSessions.find(readCookie(request, SESSION_COOKIE))) return redirect("/admin/keys");
        const q = queryFilters(request);
        return html(LoginPage({ next: q.next, loggedOut: q.signed_out === "1" }));
      })
      .post("/login", ({ request, body }) => {
        const next = field(body, "next");
        const started = s.adminSessions.start(field(body, "token")?.trim() ?? "");
        if (!started) return html(LoginPage({ next, error: "That is not a valid management token." }), 401);
        return redirect(safeNext(next), { "set-cookie": sessionCookie(request, started.sessionId, ADMIN_SESSION_TTL_MS / 1000) });
      })
      .macro({
        session: {
          resolve({ request, body, set, status }) {
            const sessionId = readCookie(request, SESSION_COOKIE);
            const session = s.adminSessions.find(sessionId);
            if (!session) {
              if (isHtmx(request)) {
                // htmx follows HX-Redirect to the login page instead of swapping this in.
                set.headers["hx-redirect"] = "/admin";
                set.headers["content-type"] = "text/plain; charset=utf-8";
                return status(401, "Sign in again: your admin session has ended.");
              }
              const url = new URL(request.url);
              set.headers.location = href("/admin", { next: request.method === "GET" ? url.pathname + url.search : undefined });
              return status(303, "");
            }
            if (request.method !== "GET" && request.method !== "HEAD") {
              const sent = request.headers.get(CSRF_HEADER) ?? field(body, CSRF_FIELD);
              if (!csrfMatches(session, sent)) {
                set.headers["content-type"] = "text/html; charset=utf-8";
                set.headers["hx-retarget"] = "#flash";
                set.headers["hx-reswap"] = "innerHTML";
                return status(403, render(FlashMessage({ tone: "danger", text: "This form is out of date (missing or wrong CSRF token). Reload the page and try again." })));
              }
            }
            return { session, sessionId };
          },
        },
      })
      .post(
        "/logout",
        ({ request, sessionId }) => {
          s.adminSessions.end(sessionId);
          return redirect("/admin?signed_out=1", { "set-cookie": sessionCookie(request, "", 0) });
        },
        { session: true },
      )

      // Keys
      .get("/keys", ({ request, session }) => keysPage(session.csrfToken, keysFilter(request), { values: {}, errors: {} }), { session: true })
      .get("/keys/table", ({ request }) => fragment(KeysTable(keysTable(keysFilter(request)))), { session: true })
      .post(
        "/keys",
        ({ request, body, session }) => {
          const issue = issueFromForm(body);
          const status = issue.issued ? 200 : 422;
          if (isHtmx(request)) return fragment(IssuePanel({ csrf: session.csrfToken, state: issue }), status);
          return keysPage(session.csrfToken, { status: "active" }, issue, status);
        },
        { session: true },
      )
      .delete(
        "/keys/:key_id",
        ({ params }) => {
          try {
            const now = Date.now();
            return fragment(KeyRow({ k: keyView(s.keys.revoke(params.key_id, now), now), now }));
          } catch (e) {
            if (e instanceof ApiError && e.code === "not_found") return flash(404, "danger", `No vault key ${params.key_id}.`);
            throw e;
          }
        },
        { session: true },
      )
      .post(
        "/runs/revoke",
        ({ request, body }) => {
          const label = field(body, "agent_run_label")?.trim() ?? "";
          if (!label) return isHtmx(request) ? flash(422, "danger", "Type the run label to revoke.") : redirect("/admin/keys");
          const { rows, newlyRevoked } = s.keys.revokeByLabel(label);
          if (!isHtmx(request)) return redirect(href("/admin/keys", { status: "revoked", label }));
          return fragment(RunRevoked({ label, revoked: newlyRevoked, total: rows.length }));
        },
        { session: true },
      )

      // Audit log
      .get(
        "/audit",
        ({ request, session }) => {
          const a = auditFilter(request, { limit: String(PAGE_SIZE) });
          const { rows, nextCursor } = a.filter ? s.audit.page({ ...a.filter, cursor: a.cursor }) : { rows: [], nextCursor: null };
          const page = AuditPage({ csrf: session.csrfToken, filter: a.values, errors: a.errors, cursor: a.cursor, rows: rows.map(presentAudit), nextCursor });
          return html(page, a.filter ? 200 : 400);
        },
        { session: true },
      )
      .get(
        "/audit/export.csv",
        ({ request }) => {
          const a = auditFilter(request, { format: "csv" });
          if (!a.filter) return new Response(Object.values(a.errors).join("\n"), { status: 400, headers: { "content-type": "text/plain; charset=utf-8" } });
          return auditExportResponse(s.audit.all(a.filter), "csv");
        },
        { session: true },
      )
      .get(
        "/audit/:id",
        ({ request, params, session }) => {
          // The newest row at or below this id, through the same paging query the list uses.
          const id = /^\d{1,15}$/.test(params.id) ? Number(params.id) : NaN;
          const row = Number.isNaN(id) ? undefined : s.audit.page(parseAuditQuery({ cursor: String(id + 1), limit: "1" })).rows[0];
          if (!row || row.id !== id) return isHtmx(request) ? flash(404, "danger", `No audit row ${params.id}.`) : html(AuditNotFound({ id: params.id }), 404);
          if (isHtmx(request)) return fragment(AuditDetail({ row: presentAudit(row) }));
          const { rows, nextCursor } = s.audit.page(parseAuditQuery({ limit: String(PAGE_SIZE) }));
          return html(AuditPage({ csrf: session.csrfToken, filter: {}, errors: {}, rows: rows.map(presentAudit), nextCursor, detail: presentAudit(row) }));
        },
        { session: true },
      )

      // Spend
      .get(
        "/spend",
        ({ request, session }) => {
          const label = queryFilters(request).label;
          const now = Date.now();
          const since = Date.parse(utcDay(now - (SPEND_DAYS - 1) * 86_400_000) + "T00:00:00Z");
          const runPoints = label === undefined ? undefined : cumulativeSpend(s.audit.all(parseAuditQuery({ label, since: new Date(since).toISOString() })));
          return html(
            SpendPage({
              csrf: session.csrfToken,
              days: SPEND_DAYS,
              label,
              daily: dailySeries(s.audit.dailySpend(since, label), now, SPEND_DAYS),
              runs: s.audit.spend(since, now + 1).by_label,
              runPoints,
            }),
          );
        },
        { session: true },
      )

      // Vendors
      .get("/vendors", ({ session }) => html(VendorsPage({ csrf: session.csrfToken, vendors: vendorCards() })), { session: true })
      .post(
        "/vendors/:vendor",
        ({ request, params, body, session }) => {
          const vendor = params.vendor;
          if (!isVendor(vendor)) return flash(404, "danger", "No such vendor.");
          let errors: FieldErrors = {};
          try {
            s.secrets.set(vendor, secretFromForm(body, ADAPTERS[vendor].secretFields));
          } catch (e) {
            if (!isInvalidInput(e)) throw e;
            errors = fieldErrorsOf(e);
          }
          const failed = Object.keys(errors).length > 0;
          if (!isHtmx(request)) {
            if (!failed) return redirect("/admin/vendors");
            const cards = vendorCards().map((c) => (c.status.vendor === vendor ? { ...c, errors } : c));
            return html(VendorsPage({ csrf: session.csrfToken, vendors: cards }), 422);
          }
          const card = { status: s.secrets.status(vendor), baseUrl: s.config.baseUrls[vendor], errors, saved: !failed };
          return fragment(VendorCard({ csrf: session.csrfToken, ...card }), failed ? 422 : 200);
        },
        { session: true },
      )
      .post(
        "/vendors/:vendor/test",
        async ({ params }) => {
          if (!isVendor(params.vendor)) return flash(404, "danger", "No such vendor.");
          const check = await checkVendorConnection(params.vendor, { secrets: s.secrets, baseUrls: s.config.baseUrls });
          return fragment(ConnectionResult({ check }));
        },
        { session: true },
      )
      .use(adminGovernanceRoutes(s)) // budgets, webhooks, events: after the session macro, which guards them too
  );
}
