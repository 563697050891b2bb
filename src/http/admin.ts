import { Elysia } from "elysia";
import { ADMIN_SESSION_TTL_MS } from "../domain/admin-sessions.ts";
import { parseAuditQuery, presentAudit, type AuditFilter } from "../domain/audit.ts";
import { issueKeySchema, presentKey } from "../domain/keys.ts";
import { labelPrefixes } from "../domain/runs.ts";
import { cumulativeSpend, dailySeries } from "../domain/spend-series.ts";
import { utcDay } from "../domain/time.ts";
import { checkVendorConnection } from "../domain/vendor-check.ts";
import type { VaultKeyRow } from "../db/schema.ts";
import { actorOf, type Principal } from "../domain/tokens.ts";
import { ApiError, fieldIssues } from "../errors.ts";
import type { Services } from "../services.ts";
import { ADAPTERS } from "../vendors/index.ts";
import { VENDORS, type VendorName } from "../vendors/types.ts";
import { ASSETS, type AssetName } from "../../views/assets.ts";
import { AuditDetailRow, AuditNotFound, AuditPage, AuditResults, type AuditFilterValues } from "../../views/audit.tsx";
import { FlashMessage } from "../../views/components.tsx";
import { href } from "../../views/format.ts";
import { Acknowledge, IssuePanel, KeyRow, KeysPage, KeysTable, RunRow, runRevokedText, type IssueFormState, type KeysFilter, type KeyTab } from "../../views/keys.tsx";
import { LoginPage } from "../../views/login.tsx";
import { SpendPage } from "../../views/spend.tsx";
import { ConnectionResult, VendorCard, VendorsPage } from "../../views/vendors.tsx";
import { adminSession } from "./admin-session.ts";
import { adminKeyEditRoutes } from "./admin-key-edit.ts";
import { adminTokenRoutes } from "./admin-tokens.ts";
import { auditExportResponse } from "./audit-export.ts";
import { adminGovernanceRoutes } from "./admin-governance.ts";
import { fieldErrorsOf, issueBodyFromForm, issueFormValues, secretFromForm, utcFromLocalInput, type FieldErrors } from "./admin-forms.ts";
import {
  AdminBodyTooLarge,
  ADMIN_HEADERS,
  ADMIN_MAX_BODY_BYTES,
  readAdminForm,
  render,
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

const KEY_TABS: readonly KeyTab[] = ["runs", "active", "revoked", "expired", "all"];
/** A key revoked this recently stays on the Active tab (shown revoked), so rows never vanish under the pointer. */
const RECENTLY_REVOKED_MS = 15 * 60_000;
const AUDIT_FILTER_FIELDS = ["label", "key_id", "vendor", "outcome", "since", "until"] as const;
const PAGE_SIZE = 50;
const SPEND_WINDOWS = [1, 7, 30, 90] as const;
const DEFAULT_SPEND_DAYS = 30;

const TOO_LARGE = Object.freeze({ tooLarge: true });

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
  const keyView = async (row: VaultKeyRow, now: number) => ({ ...presentKey(row, now), ...(await s.keys.spend(row, now)) });

  const keysTable = async (f: KeysFilter, csrf: string, now = Date.now()) => {
    const rf = { label: f.label, vendor: isVendor(f.vendor) ? f.vendor : undefined };
    const counts = await s.keys.countByStatus(rf, now);
    if (f.status === "runs") {
      const { runs, nextCursor } = await s.runs.listRuns({ ...rf, cursor: f.cursor, limit: PAGE_SIZE }, now);
      return { filter: f, counts, runs, keys: [], nextCursor, now, csrf };
    }
    const status = f.status === "all" ? undefined : f.status;
    const { rows, nextCursor } = await s.keys.list({ ...rf, status, recentGraceMs: RECENTLY_REVOKED_MS, cursor: f.cursor, limit: PAGE_SIZE }, now);
    return { filter: f, counts, keys: await Promise.all(rows.map((r) => keyView(r, now))), nextCursor, now, csrf };
  };

  const keysFilter = (request: Request): KeysFilter => {
    const q = queryFilters(request);
    const status = KEY_TABS.find((t) => t === q.status) ?? "runs";
    return { status, label: q.label, vendor: isVendor(q.vendor) ? q.vendor : undefined, cursor: q.cursor };
  };

  const unconfiguredVendors = async () => {
    const statuses = await Promise.all(VENDORS.map((v) => s.secrets.status(v)));
    return VENDORS.filter((_, i) => !statuses[i]!.configured);
  };

  /**
   * The issue form through KeyService.issue: the new key, or the form back with
   * every field's error at once (the form's own, such as metadata that is not
   * JSON, together with the API's).
   */
  const issueFromForm = async (body: unknown, by: Principal): Promise<IssueFormState> => {
    const values = issueFormValues(body);
    const { body: apiBody, errors: formErrors } = issueBodyFromForm(values);
    if (Object.keys(formErrors).length) {
      const parsed = issueKeySchema(s.config.maxKeyTtlMs).safeParse(apiBody);
      const apiErrors = parsed.success ? {} : fieldErrorsOf(new ApiError("invalid_request", "Invalid request", fieldIssues(parsed.error.issues)));
      return { values, errors: { ...apiErrors, ...formErrors } };
    }
    try {
      const { row, vaultKey } = await s.keys.issue(apiBody, by);
      const vendorUnconfigured = !(await s.secrets.status(row.vendor)).configured;
      return { values: { vendor: row.vendor }, errors: {}, issued: { key: await keyView(row, Date.now()), vaultKey, proxyBaseUrl: proxyBaseUrl(), vendorUnconfigured } };
    } catch (e) {
      if (!isInvalidInput(e)) throw e;
      return { values, errors: fieldErrorsOf(e) };
    }
  };

  const keysPage = async (csrf: string, f: KeysFilter, issue: IssueFormState, status = 200) => {
    const labels = await s.runs.suggestLabels(f.label);
    const suggestions = [...labelPrefixes(labels), ...labels];
    return html(KeysPage({ csrf, table: await keysTable(f, csrf), issue, suggestions, unconfigured: await unconfiguredVendors() }), status);
  };

  /** Revokes one key; the row comes back in place (now revoked) with an acknowledgement beside it. */
  const revokeKey = async (request: Request, keyId: string, by: Principal) => {
    try {
      const now = Date.now();
      const row = await s.keys.revoke(keyId, by, now);
      if (!isHtmx(request)) return redirect(href("/admin/keys", { status: "active", label: row.agentRunLabel }));
      const ack = Acknowledge({ text: `Revoked key ${row.keyHint}… of run “${row.agentRunLabel}”: its next call is refused.` });
      return fragment(render(KeyRow({ k: await keyView(row, now), now })) + render(ack));
    } catch (e) {
      if (e instanceof ApiError && e.code === "not_found") return flash(404, "danger", `No vault key ${keyId}.`);
      throw e;
    }
  };

  /** The audit filter from the query string: the typed values, and the parsed filter (or why it does not parse). */
  const auditFilter = (request: Request, extra: Record<string, string> = {}) => {
    const q = queryFilters(request);
    const values: AuditFilterValues = {};
    for (const k of AUDIT_FILTER_FIELDS) values[k] = q[k];
    const query: Record<string, string | undefined> = { ...values, ...extra };
    if (query.since) query.since = utcFromLocalInput(query.since);
    if (query.until) query.until = utcFromLocalInput(query.until);
    const live = q.live === "1" && !q.cursor;
    try {
      return { values, live, cursor: q.cursor, filter: parseAuditQuery(query) as AuditFilter | null, errors: {} as FieldErrors };
    } catch (e) {
      if (!isInvalidInput(e)) throw e;
      return { values, live, cursor: q.cursor, filter: null, errors: fieldErrorsOf(e) };
    }
  };

  /** One page of the audit log under a filter, with what the whole filter matched. */
  const auditList = async (a: ReturnType<typeof auditFilter>) => {
    const { rows, nextCursor } = a.filter ? await s.audit.page({ ...a.filter, cursor: a.cursor }) : { rows: [], nextCursor: null };
    const summary = a.filter ? await s.audit.summary({ ...a.filter, cursor: undefined }) : null;
    return { filter: a.values, errors: a.errors, cursor: a.cursor, live: a.live, rows: rows.map(presentAudit), nextCursor, summary };
  };

  const vendorCards = () => Promise.all(VENDORS.map(async (v) => ({ status: await s.secrets.status(v), baseUrl: s.config.baseUrls[v] })));

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
      // Every /admin body (login included) is bounded before it is read or parsed.
      // A body over the limit parses to a marker (a parse error would become Elysia's 400) and is refused here.
      .onParse(({ request }) => readAdminForm(request, ADMIN_MAX_BODY_BYTES).catch((e) => (e instanceof AdminBodyTooLarge ? TOO_LARGE : Promise.reject(e))))
      .onBeforeHandle(({ body }) => {
        if (body === TOO_LARGE) {
          return new Response(`Request body is larger than ${ADMIN_MAX_BODY_BYTES} bytes.`, { status: 413, headers: { "content-type": "text/plain; charset=utf-8", ...ADMIN_HEADERS } });
        }
      })
      .get("", async ({ request }) => {
        if (await s.adminSessions.find(readCookie(request, SESSION_COOKIE))) return redirect("/admin/keys");
        const q = queryFilters(request);
        return html(LoginPage({ next: q.next, loggedOut: q.signed_out === "1" }));
      })
      .post("/login", async ({ request, body }) => {
        const next = field(body, "next");
        const token = field(body, "token")?.trim() ?? "";
        const role = (await s.tokens.authenticate(token))?.role;
        if (role && role !== "admin") {
          return html(LoginPage({ next, error: `This is a valid ${role} token, but only admin-role tokens can sign in to the admin pages.` }), 403);
        }
        const started = await s.adminSessions.start(token);
        if (!started) return html(LoginPage({ next, error: "That is not a valid management token." }), 401);
        return redirect(safeNext(next), { "set-cookie": sessionCookie(request, started.sessionId, ADMIN_SESSION_TTL_MS / 1000) });
      })
      .use(adminSession(s))
      .use(adminTokenRoutes(s))
      .use(adminKeyEditRoutes(s))
      .use(adminGovernanceRoutes(s))
      .post(
        "/logout",
        async ({ request, sessionId }) => {
          await s.adminSessions.end(sessionId);
          return redirect("/admin?signed_out=1", { "set-cookie": sessionCookie(request, "", 0) });
        },
        { session: true },
      )

      // Keys
      .get("/keys", ({ request, session }) => keysPage(session.csrfToken, keysFilter(request), { values: {}, errors: {} }), { session: true })
      .get("/keys/table", async ({ request, session }) => fragment(KeysTable(await keysTable(keysFilter(request), session.csrfToken))), { session: true })
      .post(
        "/keys",
        async ({ request, body, session }) => {
          const issue = await issueFromForm(body, session.principal);
          const status = issue.issued ? 200 : 422;
          if (isHtmx(request)) return fragment(IssuePanel({ csrf: session.csrfToken, state: issue, unconfigured: await unconfiguredVendors() }), status);
          return keysPage(session.csrfToken, { status: "active" }, issue, status);
        },
        { session: true },
      )
      .post("/keys/:key_id/revoke", ({ request, params, session }) => revokeKey(request, params.key_id, session.principal), { session: true })
      .delete("/keys/:key_id", ({ request, params, session }) => revokeKey(request, params.key_id, session.principal), { session: true })
      .post(
        "/runs/revoke",
        async ({ request, body, session }) => {
          const label = field(body, "agent_run_label")?.trim() ?? "";
          if (!label) return isHtmx(request) ? flash(422, "danger", "Type the run label to revoke.") : redirect("/admin/keys");
          const now = Date.now();
          const { rows, newlyRevoked } = await s.keys.revokeByLabel(label, session.principal, now);
          if (!isHtmx(request)) return redirect(href("/admin/keys", { status: "runs", label }));
          const text = runRevokedText({ label, revoked: newlyRevoked, total: rows.length });
          const ack = render(Acknowledge({ text, tone: rows.length ? "ok" : "danger" }));
          // The run's row comes back in place, now revoked with its final spend.
          const run = (await s.runs.listRuns({ label, limit: 1 }, now)).runs[0];
          return fragment((run ? render(RunRow({ r: run, now })) : "") + ack, rows.length ? 200 : 404);
        },
        { session: true },
      )

      // Audit log
      .get(
        "/audit",
        async ({ request, session }) => {
          const a = auditFilter(request, { limit: String(PAGE_SIZE) });
          return html(AuditPage({ csrf: session.csrfToken, ...(await auditList(a)) }), a.filter ? 200 : 400);
        },
        { session: true },
      )
      // The list and its summary alone: what the live tail polls.
      .get(
        "/audit/rows",
        async ({ request }) => {
          const a = auditFilter(request, { limit: String(PAGE_SIZE) });
          return fragment(AuditResults(await auditList(a)), a.filter ? 200 : 400);
        },
        { session: true },
      )
      .get(
        "/audit/export.csv",
        async ({ request }) => {
          const a = auditFilter(request, { format: "csv" });
          if (!a.filter) return new Response(Object.values(a.errors).join("\n"), { status: 400, headers: { "content-type": "text/plain; charset=utf-8" } });
          return auditExportResponse(s.audit.all(a.filter), "csv");
        },
        { session: true },
      )
      .get(
        "/audit/:id",
        async ({ request, params, session }) => {
          // The newest row at or below this id, through the same paging query the list uses.
          const id = /^\d{1,15}$/.test(params.id) ? Number(params.id) : NaN;
          const row = Number.isNaN(id) ? undefined : (await s.audit.page(parseAuditQuery({ cursor: String(id + 1), limit: "1" }))).rows[0];
          if (!row || row.id !== id) return isHtmx(request) ? flash(404, "danger", `No audit row ${params.id}.`) : html(AuditNotFound({ id: params.id }), 404);
          // Opened from a row: the details go right under it, where the eye already is.
          if (isHtmx(request)) return fragment(AuditDetailRow({ row: presentAudit(row) }));
          const a = auditFilter(new Request("http://x/admin/audit"), { limit: String(PAGE_SIZE) });
          return html(AuditPage({ csrf: session.csrfToken, ...(await auditList(a)), detail: presentAudit(row) }));
        },
        { session: true },
      )

      // Spend
      .get(
        "/spend",
        async ({ request, session }) => {
          const q = queryFilters(request);
          const label = q.label;
          const days = SPEND_WINDOWS.find((d) => String(d) === q.days) ?? DEFAULT_SPEND_DAYS;
          const now = Date.now();
          const since = Date.parse(utcDay(now - (days - 1) * 86_400_000) + "T00:00:00Z");
          const runPoints = label === undefined ? undefined : await cumulativeSpend(s.audit.all(parseAuditQuery({ label, since: new Date(since).toISOString() })));
          const run = label === undefined ? undefined : (await s.runs.listRuns({ label, limit: label.endsWith("*") ? 1000 : 1 }, now)).runs;
          const runCap = run?.length
            ? run.every((r) => r.total_cap_usd !== null)
              ? { usd: run.reduce((t, r) => t + r.total_cap_usd!, 0), kind: "lifetime" as const }
              : { usd: run.reduce((t, r) => t + r.daily_cap_usd, 0), kind: "daily" as const }
            : undefined;
          return html(
            SpendPage({
              csrf: session.csrfToken,
              days,
              windows: SPEND_WINDOWS,
              label,
              daily: dailySeries(await s.audit.dailySpend(since, label), now, days),
              runs: (await s.audit.spend(since, now + 1)).by_label,
              runPoints,
              runCap,
              now,
            }),
          );
        },
        { session: true },
      )

      // Vendors
      .get("/vendors", async ({ session }) => html(VendorsPage({ csrf: session.csrfToken, vendors: await vendorCards() })), { session: true })
      .post(
        "/vendors/:vendor",
        async ({ request, params, body, session }) => {
          const vendor = params.vendor;
          if (!isVendor(vendor)) return flash(404, "danger", "No such vendor.");
          if (s.secrets.isManagedByEnv(vendor)) return flash(409, "danger", `The ${vendor} secret is managed by the environment; change it there and restart.`);
          let errors: FieldErrors = {};
          try {
            await s.secrets.set(vendor, secretFromForm(body, ADAPTERS[vendor].secretFields), actorOf(session.principal));
          } catch (e) {
            if (!isInvalidInput(e)) throw e;
            errors = fieldErrorsOf(e);
          }
          const failed = Object.keys(errors).length > 0;
          if (!isHtmx(request)) {
            if (!failed) return redirect("/admin/vendors");
            const cards = (await vendorCards()).map((c) => (c.status.vendor === vendor ? { ...c, errors } : c));
            return html(VendorsPage({ csrf: session.csrfToken, vendors: cards }), 422);
          }
          const card = { status: await s.secrets.status(vendor), baseUrl: s.config.baseUrls[vendor], errors, saved: !failed };
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
