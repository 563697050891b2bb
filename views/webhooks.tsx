import { EVENT_TYPES } from "../src/domain/events.ts";
import type { presentDelivery, presentWebhook } from "../src/domain/webhooks.ts";
import type { FieldErrors, FormValues } from "../src/http/admin-forms.ts";
import { Badge, FormError, SelectField, TextField, type Tone } from "./components.tsx";
import { href, utc } from "./format.ts";
import { CsrfField, Layout } from "./layout.tsx";

export type WebhookView = ReturnType<typeof presentWebhook>;
export type DeliveryView = ReturnType<typeof presentDelivery>;

export interface WebhookFormState {
  values: FormValues;
  /** The event types ticked in the form. */
  events: string[];
  errors: FieldErrors;
  /** The webhook just created, with its secret: shown this once. */
  created?: { webhook: WebhookView; secret: string };
}

const STATE_TONE: Record<string, Tone> = { delivered: "ok", pending: "warn", failed: "danger", active: "ok", deleted: "muted" };

export function WebhooksPage({ csrf, webhooks, form }: { csrf: string; webhooks: WebhookView[]; form: WebhookFormState }) {
  return (
    <Layout title="Webhooks" section="webhooks" csrf={csrf}>
      <div class="page-head">
        <div>
          <h1>Webhooks</h1>
          <p class="lede">Signed POSTs for cap alerts and management actions, retried for 24 hours. Slack incoming-webhook URLs work with the Slack format.</p>
        </div>
      </div>
      <WebhookForm csrf={csrf} form={form} />
      <WebhooksTable webhooks={webhooks} />
    </Layout>
  );
}

export function WebhookForm({ csrf, form }: { csrf: string; form: WebhookFormState }) {
  const e = form.errors;
  return (
    <section class="card" id="webhook-form" aria-labelledby="new-webhook-h">
      <h2 id="new-webhook-h">New webhook</h2>
      {form.created ? (
        <div class="notice ok issued" role="status" tabindex="-1" data-autofocus>
          <p class="notice-title">Webhook created. Copy its signing secret now: it is not shown again.</p>
          <div class="copy-row">
            <label class="sr-only" for="new-webhook-secret">
              Signing secret
            </label>
            <input id="new-webhook-secret" class="mono" type="text" readonly value={form.created.secret} spellcheck="false" />
            <button class="btn" type="button" data-copy="new-webhook-secret">
              Copy
            </button>
          </div>
          <p class="sub mono" safe>
            {form.created.webhook.url}
          </p>
        </div>
      ) : (
        ""
      )}
      <form class="stack" method="post" action="/admin/webhooks" novalidate>
        <CsrfField token={csrf} />
        <FormError text={e["(body)"]} />
        <div class="grid">
          <TextField name="url" label="URL" value={form.values.url} error={e.url} placeholder="https://hooks.example.com/keybrake" idPrefix="wh" class="span-2" />
          <TextField name="thresholds" label="Thresholds (fractions of a daily cap)" value={form.values.thresholds} error={e.thresholds} placeholder="0.5, 0.8, 1" idPrefix="wh" />
          <SelectField name="format" label="Format" value={form.values.format} error={e.format} options={[["json", "JSON (signed event)"], ["slack", "Slack message"]]} idPrefix="wh" />
        </div>
        <fieldset class={["field", e.events ? "has-error" : ""]}>
          <legend>Events</legend>
          {EVENT_TYPES.map((t) => (
            <label class="check-inline">
              <input type="checkbox" name="events" value={t} checked={form.events.includes(t)} /> <span class="mono" safe>{t}</span>
            </label>
          ))}
          {e.events ? (
            <p class="error" safe>
              {e.events}
            </p>
          ) : (
            ""
          )}
        </fieldset>
        <div class="form-actions">
          <button class="btn primary" type="submit">
            Create webhook
          </button>
        </div>
      </form>
    </section>
  );
}

function WebhooksTable({ webhooks }: { webhooks: WebhookView[] }) {
  if (webhooks.length === 0) {
    return (
      <div class="empty card">
        <p>No webhooks yet.</p>
      </div>
    );
  }
  return (
    <div class="table-wrap card flush">
      <table class="data webhooks cardify">
        <caption class="sr-only">Webhooks</caption>
        <thead>
          <tr>
            <th scope="col">URL</th>
            <th scope="col">Events</th>
            <th scope="col">Format</th>
            <th scope="col">Status</th>
            <th scope="col">
              <span class="sr-only">Actions</span>
            </th>
          </tr>
        </thead>
        <tbody>
          {webhooks.map((w) => (
            <tr id={`webhook-${w.webhook_id}`}>
              <td>
                <span class="mono" safe>
                  {w.url}
                </span>
                <div class="sub mono" safe>{`${w.webhook_id} · secret …${w.secret_hint}`}</div>
              </td>
              <td data-label="Events">
                <span class="mono small" safe>
                  {w.events.join(", ")}
                </span>
                {w.events.includes("cap.threshold") ? <div class="sub" safe>{`at ${w.thresholds.map((t) => `${Math.round(t * 100)}%`).join(", ")}`}</div> : ""}
              </td>
              <td data-label="Format" safe>
                {w.format}
              </td>
              <td data-label="Status">
                <Badge tone={STATE_TONE[w.status] ?? "muted"} text={w.status} />
              </td>
              <td class="actions">
                <a class="btn ghost small" href={`/admin/webhooks/${encodeURIComponent(w.webhook_id)}`}>
                  Deliveries
                </a>
                {w.status === "active" ? (
                  <button
                    class="btn danger small"
                    type="button"
                    hx-delete={`/admin/webhooks/${encodeURIComponent(w.webhook_id)}`}
                    hx-target="closest tr"
                    hx-swap="outerHTML"
                    hx-confirm="Delete this webhook? Deliveries still queued are not sent."
                    aria-label={`Delete webhook ${w.webhook_id}`}
                  >
                    Delete
                  </button>
                ) : (
                  ""
                )}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

/** One row after a delete: the same row, marked deleted. */
export function WebhookDeletedRow({ w }: { w: WebhookView }) {
  return (
    <tr id={`webhook-${w.webhook_id}`}>
      <td>
        <span class="mono" safe>
          {w.url}
        </span>
      </td>
      <td data-label="Events">
        <span class="mono small" safe>
          {w.events.join(", ")}
        </span>
      </td>
      <td data-label="Format" safe>
        {w.format}
      </td>
      <td data-label="Status">
        <Badge tone="muted" text="deleted" />
      </td>
      <td class="actions"></td>
    </tr>
  );
}

export function DeliveriesPage({ csrf, webhook, deliveries, nextCursor }: { csrf: string; webhook: WebhookView; deliveries: DeliveryView[]; nextCursor: string | null }) {
  return (
    <Layout title="Webhook deliveries" section="webhooks" csrf={csrf}>
      <div class="page-head">
        <div>
          <h1>Deliveries</h1>
          <p class="lede mono" safe>
            {webhook.url}
          </p>
        </div>
        <a class="btn ghost" href="/admin/webhooks">
          All webhooks
        </a>
      </div>
      {deliveries.length === 0 ? (
        <div class="empty card">
          <p>Nothing delivered yet.</p>
        </div>
      ) : (
        <div class="table-wrap card flush">
          <table class="data deliveries cardify">
            <caption class="sr-only">Deliveries of this webhook, newest first, with each attempt</caption>
            <thead>
              <tr>
                <th scope="col">Event</th>
                <th scope="col">State</th>
                <th scope="col">Attempts</th>
              </tr>
            </thead>
            <tbody>
              {deliveries.map((d) => (
                <tr>
                  <td>
                    <span class="mono" safe>
                      {d.event_type}
                    </span>
                    <div class="sub mono" safe>
                      {d.event_id}
                    </div>
                    <div class="sub" safe>
                      {utc(d.created_at)}
                    </div>
                  </td>
                  <td data-label="State">
                    <Badge tone={STATE_TONE[d.state] ?? "muted"} text={d.state} />
                    {d.next_attempt_at ? <div class="sub" safe>{`next try ${utc(d.next_attempt_at)}`}</div> : ""}
                  </td>
                  <td data-label="Attempts">
                    <ol class="attempts">
                      {d.attempts.map((a) => (
                        <li safe>{`#${a.attempt} ${utc(a.at)} — ${a.status ?? "no answer"}${a.error ? ` (${a.error})` : ""}, ${a.duration_ms} ms`}</li>
                      ))}
                    </ol>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      {nextCursor ? (
        <p class="pager">
          <a class="btn ghost small" href={href(`/admin/webhooks/${encodeURIComponent(webhook.webhook_id)}`, { cursor: nextCursor })}>
            Older deliveries
          </a>
        </p>
      ) : (
        ""
      )}
    </Layout>
  );
}
