import type { AuditEntry } from "../src/domain/audit.ts";
import { OUTCOMES } from "../src/domain/audit.ts";
import type { FieldErrors } from "../src/http/admin-forms.ts";
import { VENDORS } from "../src/vendors/types.ts";
import { Badge, Notice, SelectField, TextField, type Tone } from "./components.tsx";
import { href, usd, utc } from "./format.ts";
import { Layout } from "./layout.tsx";

/** The filter as typed in the form (strings), so it can be shown back and carried into links. */
export interface AuditFilterValues {
  label?: string;
  key_id?: string;
  vendor?: string;
  outcome?: string;
  since?: string;
  until?: string;
}

export interface AuditPageData {
  csrf: string;
  filter: AuditFilterValues;
  errors: FieldErrors;
  cursor?: string;
  rows: AuditEntry[];
  nextCursor: string | null;
  detail?: AuditEntry;
}

const OUTCOME_TONE: Record<string, Tone> = {
  forwarded: "ok",
  replayed: "info",
  cap_hit: "warn",
  endpoint_denied: "warn",
  invalid_request: "warn",
  revoked: "danger",
  expired: "muted",
  invalid_key: "danger",
  upstream_error: "danger",
};

/** datetime-local shows "YYYY-MM-DDTHH:MM"; anything else typed is shown as it was. */
function localInput(text: string | undefined): string | undefined {
  if (!text) return undefined;
  const ms = Date.parse(text);
  return Number.isNaN(ms) ? text : new Date(ms).toISOString().slice(0, 16);
}

export function AuditPage(p: AuditPageData) {
  const f = p.filter;
  const e = p.errors;
  return (
    <Layout title="Audit log" section="audit" csrf={p.csrf}>
      <div class="page-head">
        <div>
          <h1>Audit log</h1>
          <p class="lede">Every call that reached the proxy, refused or forwarded, newest first.</p>
        </div>
        <a class="btn" href={href("/admin/audit/export.csv", { ...f })} download="keybrake-audit.csv">
          Export CSV
        </a>
      </div>

      <form class="filters wide" method="get" action="/admin/audit" role="search" aria-label="Filter the audit log">
        <TextField name="label" label="Run label" value={f.label} error={e.label} placeholder="exact label" idPrefix="af" />
        <TextField name="key_id" label="Key id" value={f.key_id} error={e.key_id} placeholder="key_…" idPrefix="af" />
        <SelectField name="vendor" label="Vendor" value={f.vendor} error={e.vendor} options={[["", "Any vendor"], ...VENDORS]} idPrefix="af" />
        <SelectField name="outcome" label="Outcome" value={f.outcome} error={e.outcome} options={[["", "Any outcome"], ...OUTCOMES]} idPrefix="af" />
        <TextField name="since" label="Since (UTC)" type="datetime-local" value={localInput(f.since)} error={e.since} idPrefix="af" />
        <TextField name="until" label="Until (UTC)" type="datetime-local" value={localInput(f.until)} error={e.until} idPrefix="af" />
        <div class="filter-actions">
          <button class="btn" type="submit">
            Apply
          </button>
          <a class="btn ghost" href="/admin/audit">
            Reset
          </a>
        </div>
      </form>

      <div id="audit-detail">{p.detail ? <AuditDetail row={p.detail} /> : ""}</div>

      {p.rows.length ? (
        <div class="table-wrap card flush">
          <table class="data audit cardify">
            <caption class="sr-only">Audit log rows</caption>
            <thead>
              <tr>
                <th scope="col">Time (UTC)</th>
                <th scope="col">Run</th>
                <th scope="col">Request</th>
                <th scope="col">Outcome</th>
                <th scope="col" class="num">
                  Status
                </th>
                <th scope="col" class="num">
                  Cost
                </th>
                <th scope="col">
                  <span class="sr-only">Details</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {p.rows.map((r) => (
                <AuditRowView r={r} />
              ))}
            </tbody>
          </table>
        </div>
      ) : (
        <div class="empty card">
          <p>{Object.keys(e).length ? "Fix the filter above to see rows." : "No calls match this filter."}</p>
        </div>
      )}

      <p class="pager">
        {p.cursor ? (
          <a class="btn ghost small" href={href("/admin/audit", { ...f })}>
            ← Newest
          </a>
        ) : (
          ""
        )}
        {p.nextCursor ? (
          <a class="btn ghost small" href={href("/admin/audit", { ...f, cursor: p.nextCursor })}>
            Older →
          </a>
        ) : (
          ""
        )}
      </p>
    </Layout>
  );
}

function AuditRowView({ r }: { r: AuditEntry }) {
  const cost = r.settled_cost_usd !== null ? usd(r.settled_cost_usd) : r.estimated_cost_usd ? `est. ${usd(r.estimated_cost_usd)}` : "—";
  return (
    <tr id={`audit-${r.id}`}>
      <td class="nowrap mono small time" data-label="Time (UTC)" safe>
        {utc(r.time).replace(" UTC", "")}
      </td>
      <td class="run">
        <div class="label-text" safe>
          {r.agent_run_label ?? "—"}
        </div>
        <div class="sub mono" safe>
          {r.key_id ?? "no key"}
        </div>
      </td>
      <td class="req" data-label="Request">
        <span class="vendor-name" safe>
          {r.vendor}
        </span>
        <div class="mono small request" safe>
          {`${r.method} ${r.path}`}
        </div>
      </td>
      <td data-label="Outcome">
        <Badge tone={OUTCOME_TONE[r.outcome] ?? "muted"} text={r.outcome} />
      </td>
      <td class="num" data-label="Status" safe>
        {r.vendor_status === null ? "—" : String(r.vendor_status)}
      </td>
      <td class="num nowrap" data-label="Cost" safe>
        {cost}
      </td>
      <td class="actions">
        <a
          class="btn ghost small"
          href={`/admin/audit/${r.id}`}
          hx-get={`/admin/audit/${r.id}`}
          hx-target="#audit-detail"
          hx-swap="innerHTML show:top"
          aria-label={`Details of call ${r.id}`}
        >
          Details
        </a>
      </td>
    </tr>
  );
}

/** One call in full: what the vendor said, what it cost, how long it took. */
export function AuditDetail({ row: r }: { row: AuditEntry }) {
  const facts: [string, string][] = [
    ["Time", utc(r.time)],
    ["Run label", r.agent_run_label ?? "—"],
    ["Key id", r.key_id ?? "—"],
    ["Vendor", r.vendor],
    ["Request", `${r.method} ${r.path}`],
    ["Outcome", r.error_code ? `${r.outcome} (${r.error_code})` : r.outcome],
    ["Vendor status", r.vendor_status === null ? "—" : String(r.vendor_status)],
    ["Vendor request id", r.vendor_request_id ?? "—"],
    ["Vendor object id", r.vendor_object_id ?? "—"],
    ["Idempotency key", r.idempotency_key ?? "—"],
    ["Estimated cost", usd(r.estimated_cost_usd)],
    ["Settled cost", r.settled_cost_usd === null ? "not settled" : usd(r.settled_cost_usd)],
    ["Ledger", r.ledger_state],
    ["Latency", r.latency_ms === null ? "—" : `${r.latency_ms} ms`],
  ];
  if (r.replay_of !== null) facts.push(["Replay of call", `#${r.replay_of}`]);
  return (
    <section class="card detail" aria-labelledby="detail-h" tabindex="-1" data-autofocus>
      <div class="detail-head">
        <h2 id="detail-h" safe>{`Call #${r.id}`}</h2>
        <button class="btn ghost small" type="button" data-clear="audit-detail">
          Close
        </button>
      </div>
      <dl class="facts grid-facts">
        {facts.map(([k, v]) => (
          <div>
            <dt safe>{k}</dt>
            <dd class="mono" safe>
              {v}
            </dd>
          </div>
        ))}
      </dl>
    </section>
  );
}

export function AuditNotFound({ id }: { id: string }) {
  return (
    <Notice tone="danger">
      <p safe>{`No audit row ${id}.`}</p>
    </Notice>
  );
}
