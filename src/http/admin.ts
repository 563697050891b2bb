import { Elysia } from "elysia";
import { ADMIN_SESSION_TTL_MS } from "../domain/admin-sessions.ts";
import { parseAuditQuery, presentAudit, type AuditFilter } from "../domain/audit.ts";
import { presentKey } from "../domain/keys.ts";
import { cumulativeSpend, dailySeries } from "../domain/spend-series.ts";
import { utcDay } from "../domain/time.ts";
import { checkVendorConnection } from "../domain/vendor-check.ts";
import type { VaultKeyRow } from "../db/schema.ts";
import type { Principal } from "../domain/tokens.ts";
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
import { adminSession } from "./admin-session.ts";
import { adminKeyEditRoutes } from "./admin-key-edit.ts";
import { adminTokenRoutes } from "./admin-tokens.ts";
import { auditExportResponse } from "./audit-export.ts";
import { fieldErrorsOf, issueBodyFromForm, issueFormValues, secretFromForm, utcFromLocalInput, type FieldErrors } from "./admin-forms.ts";
import {
  ADMIN_HEADERS,
  field,
  fragment,
  html,
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
  const issueFromForm = (body: unknown, by: Principal): IssueFormState => {
    const values = issueFormValues(body);
    const { body: apiBody, errors } = issueBodyFromForm(values);
    if (Object.keys(errors).length) return { values, errors };
    try {
      const { row, vaultKey } = s.keys.issue(apiBody, by);
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
        const token = field(body, "token")?.trim() ?? "";
        const role = s.tokens.authenticate(token)?.role;
        if (role && role !== "admin") {
          return html(LoginPage({ next, error: `This is a valid ${role} token, but only admin-role tokens can sign in to the admin pages.` }), 403);
        }
        const started = s.adminSessions.start(token);
        if (!started) return html(LoginPage({ next, error: "That is not a valid management token." }), 401);
        return redirect(safeNext(next), { "set-cookie": sessionCookie(request, started.sessionId, ADMIN_SESSION_TTL_MS / 1000) });
      })
      .use(adminSession(s))
      .use(adminTokenRoutes(s))
      .use(adminKeyEditRoutes(s))
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
          const issue = issueFromForm(body, session.principal);
          const status = issue.issued ? 200 : 422;
          if (isHtmx(request)) return fragment(IssuePanel({ csrf: session.csrfToken, state: issue }), status);
          return keysPage(session.csrfToken, { status: "active" }, issue, status);
        },
        { session: true },
      )
      .delete(
        "/keys/:key_id",
        ({ params, session }) => {
          try {
            const now = Date.now();
            return fragment(KeyRow({ k: keyView(s.keys.revoke(params.key_id, session.principal, now), now), now }));
          } catch (e) {
            if (e instanceof ApiError && e.code === "not_found") return flash(404, "danger", `No vault key ${params.key_id}.`);
            throw e;
          }
        },
        { session: true },
      )
      .post(
        "/runs/revoke",
        ({ request, body, session }) => {
          const label = field(body, "agent_run_label")?.trim() ?? "";
          if (!label) return isHtmx(request) ? flash(422, "danger", "Type the run label to revoke.") : redirect("/admin/keys");
          const { rows, newlyRevoked } = s.keys.revokeByLabel(label, session.principal);
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
  );
}
