import type { presentBudget } from "../src/domain/budgets.ts";
import type { FieldErrors, FormValues } from "../src/http/admin-forms.ts";
import { Badge, FormError, Notice, SelectField, TextField } from "./components.tsx";
import { usd, utc } from "./format.ts";
import { CsrfField, Layout } from "./layout.tsx";

export type BudgetView = ReturnType<typeof presentBudget>;
export interface BudgetFormState {
  values: FormValues;
  errors: FieldErrors;
  /** Set after a create or change went through. */
  saved?: string;
}

const VENDOR_OPTIONS: [string, string][] = [
  ["", "Every vendor"],
  ["stripe", "Stripe"],
  ["twilio", "Twilio"],
  ["resend", "Resend"],
];

export function BudgetsPage({ csrf, budgets, form }: { csrf: string; budgets: BudgetView[]; form: BudgetFormState }) {
  return (
    <Layout title="Budgets" section="budgets" csrf={csrf}>
      <div class="page-head">
        <div>
          <h1>Budgets</h1>
          <p class="lede">
            A budget pools the daily spend (UTC day) of every key whose run label starts with its prefix. A call goes through only if it fits its key and every budget over its label.
          </p>
        </div>
      </div>
      <BudgetsSection csrf={csrf} budgets={budgets} form={form} />
    </Layout>
  );
}

/** Everything that changes when a budget does: htmx swaps this whole section. */
export function BudgetsSection({ csrf, budgets, form }: { csrf: string; budgets: BudgetView[]; form: BudgetFormState }) {
  const e = form.errors;
  return (
    <div id="budgets">
      {form.saved ? (
        <Notice tone="ok">
          <p safe>{form.saved}</p>
        </Notice>
      ) : (
        ""
      )}
      <details class="card disclosure" open={Object.keys(e).length > 0 || budgets.length === 0}>
        <summary>New budget</summary>
        <form class="stack" method="post" action="/admin/budgets" hx-post="/admin/budgets" hx-target="#budgets" hx-swap="outerHTML" novalidate>
          <CsrfField token={csrf} />
          <FormError text={e["(body)"]} />
          <div class="grid">
            <TextField name="name" label="Name" value={form.values.name} error={e.name} placeholder="Kestra, all flows" idPrefix="nb" />
            <TextField name="label_prefix" label="Run label prefix" value={form.values.label_prefix} error={e.label_prefix} placeholder="kestra/" idPrefix="nb" />
            <TextField name="daily_usd_cap" label="Daily cap (USD)" value={form.values.daily_usd_cap} error={e.daily_usd_cap} inputmode="decimal" placeholder="2000" idPrefix="nb" />
            <SelectField name="vendor" label="Vendor" value={form.values.vendor} error={e.vendor} options={VENDOR_OPTIONS} idPrefix="nb" />
          </div>
          <div class="form-actions">
            <button class="btn primary" type="submit">
              Create budget
            </button>
          </div>
        </form>
      </details>
      {budgets.length === 0 ? (
        <div class="empty card">
          <p>No budgets yet. Without one, each key's own cap is the only limit.</p>
        </div>
      ) : (
        <div class="table-wrap card flush">
          <table class="data budgets cardify">
            <caption class="sr-only">Budgets with their spend today</caption>
            <thead>
              <tr>
                <th scope="col">Budget</th>
                <th scope="col">Vendor</th>
                <th scope="col" class="spend-col">
                  Spend today
                </th>
                <th scope="col">Changed</th>
                <th scope="col">
                  <span class="sr-only">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {budgets.map((b) => (
                <BudgetRow b={b} csrf={csrf} />
              ))}
            </tbody>
          </table>
        </div>
      )}
    </div>
  );
}

function BudgetRow({ b, csrf }: { b: BudgetView; csrf: string }) {
  const max = Math.max(b.daily_usd_cap, 0.000001);
  const used = Math.min(b.spent_today_usd + b.reserved_usd, max);
  const id = encodeURIComponent(b.budget_id);
  return (
    <tr id={`budget-${b.budget_id}`}>
      <td>
        <strong safe>{b.name}</strong>
        <div class="sub mono" safe>{`${b.label_prefix}…`}</div>
        <div class="sub mono" safe>
          {b.budget_id}
        </div>
      </td>
      <td data-label="Vendor" safe>
        {b.vendor ?? "every vendor"}
      </td>
      <td class="spend-col" data-label="Spend today">
        <meter min="0" max={String(max)} low={String(max * 0.75)} high={String(max * 0.9)} optimum="0" value={String(used)} aria-label={`Spend today of budget ${b.name}`}>
          {usd(used)}
        </meter>
        <div class="amount">
          <strong class="spent" safe>
            {usd(b.spent_today_usd)}
          </strong>{" "}
          <span class="muted" safe>{`of ${usd(b.daily_usd_cap)}`}</span>
        </div>
        {b.reserved_usd > 0 ? <div class="sub" safe>{`+ ${usd(b.reserved_usd)} reserved in flight`}</div> : ""}
        <div class="sub" safe>{`${usd(b.remaining_today_usd)} left today`}</div>
      </td>
      <td data-label="Changed">
        <span class="sub" safe>
          {utc(b.updated_at)}
        </span>
      </td>
      <td class="actions">
        <details class="more">
          <summary>Edit</summary>
          {/* A plain POST and redirect: htmx's swap of this row (same ids old and new) trips the CSP's style-src in Chromium. */}
          <form class="stack" method="post" action={`/admin/budgets/${id}`} novalidate>
            <CsrfField token={csrf} />
            <TextField name="name" label="Name" value={b.name} idPrefix={`e-${b.budget_id}`} />
            <TextField name="label_prefix" label="Run label prefix" value={b.label_prefix} idPrefix={`e-${b.budget_id}`} />
            <TextField name="daily_usd_cap" label="Daily cap (USD)" value={String(b.daily_usd_cap)} inputmode="decimal" idPrefix={`e-${b.budget_id}`} />
            <SelectField name="vendor" label="Vendor" value={b.vendor ?? ""} options={VENDOR_OPTIONS} idPrefix={`e-${b.budget_id}`} />
            <button class="btn primary small" type="submit">
              Save
            </button>
          </form>
        </details>
        <form method="post" action={`/admin/budgets/${id}/delete`} hx-post={`/admin/budgets/${id}/delete`} hx-target="#budgets" hx-swap="outerHTML" hx-confirm={`Delete budget “${b.name}”? Its keys are then limited by their own caps only.`}>
          <CsrfField token={csrf} />
          <button class="btn danger small" type="submit" aria-label={`Delete budget ${b.name}`}>
            Delete
          </button>
        </form>
        {b.status === "deleted" ? <Badge tone="muted" text="deleted" /> : ""}
      </td>
    </tr>
  );
}
