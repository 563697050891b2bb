import type { AuditEntry, AuditSummary } from "../src/domain/audit.ts";
import { OUTCOMES } from "../src/domain/audit.ts";
import type { FieldErrors } from "../src/http/admin-forms.ts";
import { VENDORS } from "../src/vendors/types.ts";
import { Badge, Notice, SelectField, TextField, Time, type Tone } from "./components.tsx";
import { href, usd, usdMicros, utc } from "./format.ts";
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

export interface AuditListData {
  filter: AuditFilterValues;
  errors: FieldErrors;
  cursor?: string;
  live: boolean;
  rows: AuditEntry[];
  nextCursor: string | null;
  summary: AuditSummary | null;
}

export interface AuditPageData extends AuditListData {
  csrf: string;
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

/** What the client got back when Keybrake refused the call itself (SPEC §3), where no vendor status exists. */
const REFUSAL_STATUS: Record<string, number> = {
  cap_hit: 429,
  endpoint_denied: 403,
  revoked: 401,
  expired: 401,
  invalid_key: 401,
  invalid_request: 400,
  upstream_error: 502,
};

/** The status the client saw, and whether Keybrake (not the vendor) answered. */
export function clientStatus(r: Pick<AuditEntry, "vendor_status" | "outcome">): { status: number | null; byKeybrake: boolean } {
  if (r.vendor_status !== null) return { status: r.vendor_status, byKeybrake: false };
  return { status: REFUSAL_STATUS[r.outcome] ?? null, byKeybrake: r.outcome in REFUSAL_STATUS };
}

/** Refused calls never reached the vendor: no money moved, whatever they would have cost. */
export const isRefusal = (outcome: string) => !["forwarded", "replayed", "upstream_error"].includes(outcome);

/** "/v1/customers/cus_123/…/sources": long paths keep their start and end on one line; the whole path is in the title. */
export function shortPath(path: string, max = 34): string {
  if (path.length <= max) return path;
  const keep = max - 1;
  // The end of a path (the object and action) says more than its start.
  const head = Math.ceil(keep * 0.35);
  return `${path.slice(0, head)}…${path.slice(path.length - (keep - head))}`;
}

const LEDGER_WORDS: Record<string, string> = {
  none: "nothing reserved (refused before pricing)",
  reserved: "reserved, call in flight",
  settled: "settled",
  released: "reservation released (no money moved)",
  unsettled: "kept reserved: outcome unknown",
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
        <div class="head-actions">
          {p.cursor ? (
            ""
          ) : p.live ? (
            <a class="btn" href={href("/admin/audit", { ...f })} aria-pressed="true">
              Live tail: on
            </a>
          ) : (
            <a class="btn" href={href("/admin/audit", { ...f, live: "1" })} aria-pressed="false">
              Live tail: off
            </a>
          )}
          <a class="btn" href={href("/admin/audit/export.csv", { ...f })} download="keybrake-audit.csv">
            Export CSV
          </a>
        </div>
      </div>

      <form class="filters wide" method="get" action="/admin/audit" role="search" aria-label="Filter the audit log">
        {p.live ? <input type="hidden" name="live" value="1" /> : ""}
        <TextField name="label" label="Run label" value={f.label} error={e.label} placeholder="airflow-billing/* or an exact label" idPrefix="af" class="wide" />
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

      <div id="audit-detail">{p.detail ? <AuditDetail row={p.detail} standalone /> : ""}</div>

      {p.live ? (
        <div id="audit-live" hx-get={href("/admin/audit/rows", { ...f, live: "1" })} hx-trigger="every 3s" hx-swap="innerMorph">
          <AuditResults {...p} />
        </div>
      ) : (
        <div id="audit-live">
          <AuditResults {...p} />
        </div>
      )}
    </Layout>
  );
}

function SummaryLine({ s, filtered }: { s: AuditSummary; filtered: boolean }) {
  const parts = [
    `${s.calls} ${s.calls === 1 ? "call" : "calls"}`,
    `${usdMicros(s.settledMicros)} spent`,
    s.reservedMicros ? `${usdMicros(s.reservedMicros)} reserved or unsettled` : "",
    `${s.refused} refused`,
    `${s.capHits} cap ${s.capHits === 1 ? "hit" : "hits"}`,
  ].filter(Boolean);
  return (
    <p class="summary" role="status" safe>
      {`${filtered ? "This filter matches" : "All time"}: ${parts.join(" · ")}`}
    </p>
  );
}

/** The summary, the rows and the pager: the part the live tail refreshes. */
export function AuditResults(p: AuditListData) {
  const f = p.filter;
  const filtered = Object.values(f).some((v) => v !== undefined);
  return (
    <>
      {p.summary ? <SummaryLine s={p.summary} filtered={filtered} /> : ""}
      {p.rows.length ? (
        <div class="table-wrap card flush">
          <table class="data audit cardify">
            <caption class="sr-only">Audit log rows</caption>
            <thead>
              <tr>
                <th scope="col" data-zone-label>
                  Time (UTC)
                </th>
                <th scope="col">Run</th>
                <th scope="col">Key</th>
                <th scope="col">Request</th>
                <th scope="col">Outcome</th>
                <th scope="col" class="num">
                  Cost
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
          <p>{Object.keys(p.errors).length ? "Fix the filter above to see rows." : p.cursor ? "No older calls." : filtered ? "No calls match this filter." : "No calls yet: they appear here as soon as a vault key is used."}</p>
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
    </>
  );
}

/** The Cost cell: money spent, money held, or (for refusals) nothing, with what it would have cost kept apart. */
function CostCell({ r }: { r: AuditEntry }) {
  if (isRefusal(r.outcome)) {
    return (
      <span class="muted" title={r.estimated_cost_usd ? `Refused: nothing spent (would have cost ${usd(r.estimated_cost_usd)})` : "Refused: nothing spent"}>
        —
      </span>
    );
  }
  if (r.settled_cost_usd !== null) return <span safe>{usd(r.settled_cost_usd)}</span>;
  if (r.ledger_state === "released") return <span class="muted">$0.00</span>;
  return (
    <span class="held" title="Kept reserved: the outcome is unknown, so the money stays counted" safe>
      {`${usd(r.estimated_cost_usd)} held`}
    </span>
  );
}

/** "key_…9wf8je": enough of a key id to tell keys apart on one line; the link and title carry all of it. */
function shortKeyId(id: string): string {
  return id.length > 14 ? `${id.slice(0, 4)}…${id.slice(-6)}` : id;
}

function AuditRowView({ r }: { r: AuditEntry }) {
  const { status, byKeybrake } = clientStatus(r);
  const request = `${r.method} ${r.path}`;
  return (
    <tr id={`audit-${r.id}`}>
      <td class="nowrap mono small time" data-label="Time">
        {/* The time opens the call's details right under its row (a second click closes them). */}
        <a
          href={`/admin/audit/${r.id}`}
          hx-get={`/admin/audit/${r.id}`}
          hx-target="closest tr"
          hx-swap="afterend"
          data-detail-toggle={`audit-detail-${r.id}`}
          aria-expanded="false"
          aria-label={`Details of call ${r.id}`}
          class="details-link"
        >
          <Time at={r.time} text={r.time.slice(5, 19).replace("T", " ")} compact />
          <span class="chev" aria-hidden="true"></span>
        </a>
      </td>
      <td class="run one-line" data-label="Run">
        {r.agent_run_label !== null ? (
          <a class="label-text" href={href("/admin/audit", { label: r.agent_run_label })} title={`Calls of run ${r.agent_run_label}`} safe>
            {r.agent_run_label}
          </a>
        ) : (
          <span class="muted">no run</span>
        )}
      </td>
      <td class="mono small nowrap key-cell" data-label="Key">
        {r.key_id ? (
          <a href={href("/admin/audit", { key_id: r.key_id })} title={`Calls of key ${r.key_id}`} safe>
            {shortKeyId(r.key_id)}
          </a>
        ) : (
          <span class="muted">no key</span>
        )}
      </td>
      <td class="req one-line" data-label="Request">
        <span class="mono small request" title={`${r.vendor}: ${request}`} tabindex="0" data-full={request} safe>
          {`${r.method} ${shortPath(r.path)}`}
        </span>
      </td>
      <td class="nowrap" data-label="Outcome">
        <Badge tone={OUTCOME_TONE[r.outcome] ?? "muted"} text={r.outcome} />{" "}
        <span
          class={["status", byKeybrake ? "by-keybrake" : ""]}
          title={byKeybrake ? `The client got ${status} from Keybrake: the vendor was not called` : status === null ? undefined : `${r.vendor} answered ${status}`}
          safe
        >
          {status === null ? "—" : String(status)}
        </span>
      </td>
      <td class="num nowrap" data-label="Cost">
        <CostCell r={r} />
      </td>
    </tr>
  );
}

/** One call's details as a row under it (opened in place from the list). */
export function AuditDetailRow({ row }: { row: AuditEntry }) {
  return (
    <tr class="detail-row" id={`audit-detail-${row.id}`}>
      <td colspan="6">
        <AuditDetail row={row} />
      </td>
    </tr>
  );
}

/** One call in full: what the vendor said, what it cost, how long it took. */
export function AuditDetail({ row: r, standalone = false }: { row: AuditEntry; standalone?: boolean }) {
  const { status, byKeybrake } = clientStatus(r);
  const refused = isRefusal(r.outcome);
  const facts: [string, string][] = [
    ["Time", utc(r.time)],
    ["Run label", r.agent_run_label ?? "—"],
    ["Key id", r.key_id ?? "—"],
    ["Vendor", r.vendor],
    ["Request", `${r.method} ${r.path}`],
    ["Outcome", r.error_code ? `${r.outcome} (${r.error_code})` : r.outcome],
    ["Status the client got", status === null ? "—" : byKeybrake ? `${status}, from Keybrake (the vendor was not called)` : `${status}, from ${r.vendor}`],
    ["Vendor request id", r.vendor_request_id ?? "—"],
    ["Vendor object id", r.vendor_object_id ?? "—"],
    ["Idempotency key", r.idempotency_key ?? "—"],
    refused ? ["Would have cost", `${usd(r.estimated_cost_usd)} (refused: nothing spent)`] : ["Estimated cost", usd(r.estimated_cost_usd)],
    ["Settled cost", r.settled_cost_usd === null ? (refused ? "—" : "not settled") : usd(r.settled_cost_usd)],
    ["Reservation", LEDGER_WORDS[r.ledger_state] ?? r.ledger_state],
    ["Latency", r.latency_ms === null ? "—" : `${r.latency_ms} ms`],
  ];
  if (r.replay_of !== null) facts.push(["Replay of call", `#${r.replay_of}`]);
  return (
    <section class={["detail", standalone ? "card" : "inline"]} aria-label={`Call ${r.id}`} tabindex="-1" data-autofocus>
      <div class="detail-head">
        <h2 safe>{`Call #${r.id}`}</h2>
        {standalone ? (
          <button class="btn ghost small" type="button" data-clear="audit-detail">
            Close
          </button>
        ) : (
          <button class="btn ghost small" type="button" data-remove={`audit-detail-${r.id}`}>
            Close
          </button>
        )}
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
