import { Elysia } from "elysia";
import type { AdminSession } from "../domain/admin-sessions.ts";
import { actorOf } from "../domain/tokens.ts";
import { presentBudget } from "../domain/budgets.ts";
import { EVENT_TYPES, presentEvent, type EventType } from "../domain/events.ts";
import { presentWebhook } from "../domain/webhooks.ts";
import { ApiError } from "../errors.ts";
import type { Services } from "../services.ts";
import { BudgetsPage, BudgetsSection, type BudgetFormState } from "../../views/budgets.tsx";
import { EventsPage, type EventsFilterValues } from "../../views/events.tsx";
import { DeliveriesPage, WebhookDeletedRow, WebhooksPage, type WebhookFormState } from "../../views/webhooks.tsx";
import { fieldErrorsOf, utcFromLocalInput, type FieldErrors, type FormValues } from "./admin-forms.ts";
import { field, fragment, html, isHtmx, queryFilters, redirect } from "./admin-kit.ts";
import { adminSession } from "./admin-session.ts";

const PAGE_SIZE = 50;

const isInvalid = (e: unknown): e is ApiError => e instanceof ApiError && e.code === "invalid_request";

/** A money field typed into a form: a number when it reads as one, else the text (so the API's own error names it). */
function amount(text: string | undefined): unknown {
  if (text === undefined || text.trim() === "") return undefined;
  const n = Number(text.replace(/[$,\s]/g, ""));
  return Number.isFinite(n) ? n : text;
}

function budgetFormValues(body: unknown): FormValues {
  return { name: field(body, "name"), label_prefix: field(body, "label_prefix"), daily_usd_cap: field(body, "daily_usd_cap"), vendor: field(body, "vendor") };
}

function budgetBody(v: FormValues, partial: boolean): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  if (!partial || v.name !== undefined) out.name = v.name ?? "";
  if (!partial || v.label_prefix !== undefined) out.label_prefix = v.label_prefix ?? "";
  const cap = amount(v.daily_usd_cap);
  if (cap !== undefined || !partial) out.daily_usd_cap = cap;
  if (v.vendor !== undefined) out.vendor = v.vendor === "" ? null : v.vendor;
  return out;
}

function listField(body: unknown, name: string): string[] {
  const v = body && typeof body === "object" ? (body as Record<string, unknown>)[name] : undefined;
  const list = Array.isArray(v) ? v : v === undefined ? [] : [v];
  return list.filter((x): x is string => typeof x === "string");
}

/**
 * The admin Budgets, Webhooks (with their deliveries) and Events pages (SPEC §7). Only admin
 * sessions exist, so every route here is admin-only by construction. Mounted inside the /admin
 * prefix by src/http/admin.ts.
 */
export function adminGovernanceRoutes(s: Services) {
  const budgetViews = async () => {
    const now = Date.now();
    const rows = await s.budgets.list();
    return Promise.all(rows.map(async (r) => presentBudget(r, await s.budgets.spend(r, now))));
  };

  /** Runs a budget change from a form; the section back (htmx), or the page. */
  const budgetChange = async (request: Request, session: AdminSession, change: () => Promise<string>, values: FormValues) => {
    let form: BudgetFormState;
    let status = 200;
    try {
      form = { values: {}, errors: {}, saved: await change() };
    } catch (e) {
      if (e instanceof ApiError && e.code === "not_found") return new Response("No such budget.", { status: 404 });
      if (!(e instanceof ApiError) || (e.code !== "invalid_request" && e.code !== "conflict")) throw e;
      form = { values, errors: e.code === "invalid_request" ? fieldErrorsOf(e) : { "(body)": e.message } };
      status = 422;
    }
    if (isHtmx(request)) return fragment(BudgetsSection({ csrf: session.csrfToken, budgets: await budgetViews(), form }), status);
    if (status === 200) return redirect("/admin/budgets?saved=1");
    return html(BudgetsPage({ csrf: session.csrfToken, budgets: await budgetViews(), form }), status);
  };

  const webhooksPage = async (session: AdminSession, form: WebhookFormState, status = 200) =>
    html(WebhooksPage({ csrf: session.csrfToken, webhooks: (await s.webhooks.list()).map((w) => presentWebhook(w)), form }), status);

  return (
    new Elysia()
      .use(adminSession(s))
      // Budgets
      .get("/budgets", async (ctx) => {
        const saved = queryFilters(ctx.request).saved === "1" ? "Budget saved." : undefined;
        return html(BudgetsPage({ csrf: ctx.session.csrfToken, budgets: await budgetViews(), form: { values: {}, errors: {}, saved } }));
      }, { session: true })
      .post(
        "/budgets",
        (ctx) => {
          const values = budgetFormValues(ctx.body);
          const session = ctx.session;
          return budgetChange(ctx.request, session, async () => `Budget “${(await s.budgets.create(budgetBody(values, false), actorOf(session.principal))).name}” created.`, values);
        },
        { session: true },
      )
      .post(
        "/budgets/:id",
        (ctx) => {
          const values = budgetFormValues(ctx.body);
          const session = ctx.session;
          return budgetChange(ctx.request, session, async () => `Budget “${(await s.budgets.update(ctx.params.id, budgetBody(values, true), actorOf(session.principal))).name}” saved.`, values);
        },
        { session: true },
      )
      .post(
        "/budgets/:id/delete",
        (ctx) => {
          const session = ctx.session;
          return budgetChange(ctx.request, session, async () => `Budget “${(await s.budgets.remove(ctx.params.id, actorOf(session.principal))).name}” deleted.`, {});
        },
        { session: true },
      )

      // Webhooks
      .get("/webhooks", (ctx) => webhooksPage(ctx.session, { values: { format: "json" }, events: ["cap.threshold", "cap.hit"], errors: {} }), { session: true })
      .post(
        "/webhooks",
        async (ctx) => {
          const session = ctx.session;
          const values: FormValues = { url: field(ctx.body, "url"), thresholds: field(ctx.body, "thresholds"), format: field(ctx.body, "format") };
          const events = listField(ctx.body, "events");
          const thresholdsText = values.thresholds?.trim();
          const thresholds = thresholdsText ? thresholdsText.split(/[\s,]+/).filter(Boolean).map((t) => (t.endsWith("%") ? Number(t.slice(0, -1)) / 100 : Number(t))) : undefined;
          try {
            const { row, secret } = await s.webhooks.create({ url: values.url ?? "", events, ...(thresholds ? { thresholds } : {}), format: values.format || "json" });
            // Rendered in answer to the POST (never a redirect): the secret exists only in this response.
            return await webhooksPage(session, { values: { format: "json" }, events: ["cap.threshold", "cap.hit"], errors: {}, created: { webhook: presentWebhook(row, { revealUrl: true }), secret } });
          } catch (e) {
            if (!isInvalid(e)) throw e;
            return webhooksPage(session, { values, events, errors: fieldErrorsOf(e) as FieldErrors }, 422);
          }
        },
        { session: true },
      )
      .delete(
        "/webhooks/:id",
        async (ctx) => {
          try {
            return fragment(WebhookDeletedRow({ w: presentWebhook(await s.webhooks.remove(ctx.params.id)) }));
          } catch (e) {
            if (e instanceof ApiError && e.code === "not_found") return new Response("No such webhook.", { status: 404 });
            throw e;
          }
        },
        { session: true },
      )
      .get(
        "/webhooks/:id",
        async (ctx) => {
          const session = ctx.session;
          try {
            const webhook = presentWebhook(await s.webhooks.get(ctx.params.id));
            const { data, nextCursor } = await s.webhooks.deliveries(ctx.params.id, { cursor: queryFilters(ctx.request).cursor, limit: PAGE_SIZE });
            return html(DeliveriesPage({ csrf: session.csrfToken, webhook, deliveries: data, nextCursor }));
          } catch (e) {
            if (e instanceof ApiError && e.code === "not_found") return redirect("/admin/webhooks");
            throw e;
          }
        },
        { session: true },
      )

      // Events
      .get(
        "/events",
        async (ctx) => {
          const q = queryFilters(ctx.request);
          const filter: EventsFilterValues = { type: q.type, since: q.since, until: q.until };
          const errors: FieldErrors = {};
          const time = (name: "since" | "until") => {
            const text = filter[name];
            if (!text) return undefined;
            const ms = Date.parse(utcFromLocalInput(text));
            if (Number.isNaN(ms)) errors[name] = `${name} must be a date and time`;
            return ms;
          };
          if (filter.type && !(EVENT_TYPES as readonly string[]).includes(filter.type)) errors.type = `type must be one of ${EVENT_TYPES.join(", ")}`;
          const since = time("since");
          const until = time("until");
          const ok = Object.keys(errors).length === 0;
          const { rows, nextCursor } = ok
            ? await s.events.list({ type: filter.type as EventType | undefined, since, until, cursor: q.cursor, limit: PAGE_SIZE })
            : { rows: [], nextCursor: null };
          return html(EventsPage({ csrf: ctx.session.csrfToken, filter, errors, rows: rows.map(presentEvent), nextCursor }), ok ? 200 : 422);
        },
        { session: true },
      )
  );
}
