import type { presentKey } from "../src/domain/keys.ts";
import type { FieldErrors, FormValues } from "../src/http/admin-forms.ts";
import { VENDORS } from "../src/vendors/types.ts";
import type { RunSummary } from "../src/domain/runs.ts";
import { Badge, Checkbox, Notice, SelectField, TextArea, TextField, Time, type Tone } from "./components.tsx";
import { href, relative, usd } from "./format.ts";
import { CsrfField, Layout } from "./layout.tsx";

export type KeyView = ReturnType<typeof presentKey> & {
  spent_today_usd: number;
  reserved_usd: number;
  remaining_today_usd: number;
  spent_total_usd: number;
};

export type KeyTab = "runs" | "active" | "revoked" | "expired" | "all";

export interface KeysFilter {
  status: KeyTab;
  label?: string;
  vendor?: string;
  cursor?: string;
}

export interface KeysTableData {
  filter: KeysFilter;
  counts: Record<"active" | "revoked" | "expired", number>;
  /** Runs matching the filter (the Runs tab), or keys (the other tabs). */
  runs?: RunSummary[];
  keys: KeyView[];
  nextCursor: string | null;
  now: number;
  /** For the row forms' no-JS fallback; htmx sends the header from <body>. */
  csrf?: string;
}

export interface IssuedKey {
  key: KeyView;
  vaultKey: string;
  proxyBaseUrl: string;
  /** The vendor has no secret configured yet: calls will fail until one is set. */
  vendorUnconfigured?: boolean;
}

export interface IssueFormState {
  values: FormValues;
  errors: FieldErrors;
  issued?: IssuedKey;
}

const STATUS_TONE: Record<string, Tone> = { active: "ok", revoked: "danger", expired: "muted" };

const TABS: { tab: KeyTab; label: string }[] = [
  { tab: "runs", label: "Runs" },
  { tab: "active", label: "Active keys" },
  { tab: "revoked", label: "Revoked" },
  { tab: "expired", label: "Expired" },
  { tab: "all", label: "All keys" },
];

export function KeysPage(p: { csrf: string; table: KeysTableData; issue: IssueFormState; suggestions: string[]; unconfigured: string[] }) {
  const f = p.table.filter;
  const issueOpen = Boolean(p.issue.issued) || Object.keys(p.issue.errors).length > 0;
  return (
    <Layout title="Keys" section="keys" csrf={p.csrf}>
      <div class="page-head">
        <div>
          <h1>Vault keys</h1>
          <p class="lede phone-hide">Runs and their keys, with spend today against the caps (UTC day). Refreshes every 2 seconds.</p>
        </div>
      </div>

      <details class="card disclosure" id="issue" open={issueOpen}>
        <summary>
          <h2>Issue a key</h2>
        </summary>
        <IssuePanel csrf={p.csrf} state={p.issue} unconfigured={p.unconfigured} />
      </details>

      <form class="filters keys-filters" method="get" action="/admin/keys" role="search" aria-label="Filter runs and keys">
        <input type="hidden" name="status" value={f.status} />
        <div class="field wide">
          <label for="kf-label">Run label</label>
          <input
            id="kf-label"
            name="label"
            type="search"
            list="kf-labels"
            value={f.label}
            placeholder="airflow-billing/* or an exact label"
            autocomplete="off"
            spellcheck="false"
            aria-describedby="kf-label-hint"
          />
          <datalist id="kf-labels">
            {p.suggestions.map((l) => (
              <option value={l} />
            ))}
          </datalist>
          <p class="hint" id="kf-label-hint">
            End with * to match every run that starts with it.
          </p>
        </div>
        <SelectField name="vendor" label="Vendor" value={f.vendor} options={[["", "Any vendor"], ...VENDORS]} idPrefix="kf" />
        <div class="filter-actions">
          <button class="btn" type="submit">
            Filter
          </button>
          <a class="btn ghost" href={href("/admin/keys", { status: f.status })}>
            Clear
          </a>
        </div>
      </form>

      <div
        id="keys-live"
        hx-get={href("/admin/keys/table", { status: f.status, label: f.label, vendor: f.vendor, cursor: f.cursor })}
        hx-trigger="every 2s"
        hx-swap="innerMorph"
      >
        <KeysTable {...p.table} />
      </div>
    </Layout>
  );
}

function StatusTabs({ filter, counts, runCount }: Pick<KeysTableData, "filter" | "counts"> & { runCount?: number }) {
  return (
    <nav class="tabs" aria-label="Runs and keys by status">
      {TABS.map((t) => {
        const n = t.tab === "runs" ? runCount : t.tab === "all" ? counts.active + counts.revoked + counts.expired : counts[t.tab];
        return (
          <a href={href("/admin/keys", { status: t.tab, label: filter.label, vendor: filter.vendor })} aria-current={t.tab === filter.status ? "page" : undefined}>
            {t.label}
            {n === undefined ? "" : <span class="count">{String(n)}</span>}
          </a>
        );
      })}
    </nav>
  );
}

function describeFilter(f: KeysFilter): string {
  const parts = [f.label ? (f.label.endsWith("*") ? `labels starting with “${f.label.slice(0, -1)}”` : `label “${f.label}”`) : "", f.vendor ?? ""].filter(Boolean);
  return parts.length ? ` for ${parts.join(", ")}` : "";
}

/** The live part of the keys page (tabs with counts that follow the filter, and the list): polled every 2 s and morphed in place. */
export function KeysTable(d: KeysTableData) {
  const { filter, counts, keys, nextCursor, now } = d;
  const tabs = <StatusTabs filter={filter} counts={counts} runCount={d.runs && !filter.cursor && !nextCursor ? d.runs.length : undefined} />;
  const empty = filter.status === "runs" ? !d.runs?.length : !keys.length;
  if (empty) {
    const what = filter.status === "runs" ? "runs" : filter.status === "all" ? "keys" : `${filter.status} keys`;
    return (
      <>
        {tabs}
        <div class="empty card">
          <p safe>{filter.cursor ? `No older ${what}.` : `No ${what}${describeFilter(filter)}.`}</p>
          {filter.label && !filter.label.endsWith("*") ? (
            <p class="small">
              <a href={href("/admin/keys", { status: filter.status, label: `${filter.label}*`, vendor: filter.vendor })} safe>{`Try labels starting with “${filter.label}”`}</a>
            </p>
          ) : (
            ""
          )}
        </div>
      </>
    );
  }
  const older = nextCursor ? (
    <p class="pager">
      <a class="btn ghost small" href={href("/admin/keys", { status: filter.status, label: filter.label, vendor: filter.vendor, cursor: nextCursor })}>
        {filter.status === "runs" ? "Older runs →" : "Older keys →"}
      </a>
    </p>
  ) : (
    ""
  );
  if (filter.status === "runs") {
    return (
      <>
        {tabs}
        <div class="table-wrap card flush">
          <table class="data runs cardify">
            <caption class="sr-only">Runs with their spend today against their caps</caption>
            <thead>
              <tr>
                <th scope="col">Run</th>
                <th scope="col" class="spend-col">
                  Spent today / cap
                </th>
                <th scope="col" class="num">
                  Calls
                </th>
                <th scope="col" class="num">
                  Cap hits
                </th>
                <th scope="col">Last call</th>
                <th scope="col">Status</th>
                <th scope="col">
                  <span class="sr-only">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {d.runs!.map((r) => (
                <RunRow r={r} now={now} csrf={d.csrf} />
              ))}
            </tbody>
          </table>
          {older}
        </div>
      </>
    );
  }
  return (
    <>
      {tabs}
      <div class="table-wrap card flush">
        <table class="data keys cardify">
          <caption class="sr-only">Vault keys with their spend today</caption>
          <thead>
            <tr>
              <th scope="col">Run and key</th>
              <th scope="col">Vendor</th>
              <th scope="col" class="spend-col">
                Spend today
              </th>
              <th scope="col">Expires</th>
              <th scope="col">Status</th>
              <th scope="col">
                <span class="sr-only">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {keys.map((k) => (
              <KeyRow k={k} now={now} csrf={d.csrf} />
            ))}
          </tbody>
        </table>
        {older}
      </div>
    </>
  );
}

/** Spend against a cap as a bar and "$x of $y": one drawing for keys and runs. */
function SpendMeter({ spent, reserved, cap, name }: { spent: number; reserved: number; cap: number; name: string }) {
  const used = spent + reserved;
  // A $0 cap still draws an (empty) bar; meter needs max > min.
  const max = Math.max(cap, used, 0.000001);
  return (
    <>
      <meter min="0" max={String(max)} low={String(max * 0.75)} high={String(max * 0.9)} optimum="0" value={String(used)} aria-label={`Spend today of ${name}`}>
        {usd(used)}
      </meter>
      <div class="amount">
        <strong class="spent" safe>
          {usd(spent)}
        </strong>{" "}
        <span class="muted" safe>{`of ${usd(cap)}`}</span>
      </div>
      {reserved > 0 ? (
        <div class="sub" safe>
          {`+ ${usd(reserved)} reserved in flight`}
        </div>
      ) : (
        ""
      )}
    </>
  );
}

export function RunRow({ r, now, csrf }: { r: RunSummary; now: number; csrf?: string }) {
  const keysText = `${r.keys} ${r.keys === 1 ? "key" : "keys"}`;
  return (
    <tr id={`run-${runDomId(r.agent_run_label)}`} class={r.status === "active" ? "" : "inactive"}>
      <td class="run">
        <a class="label-text" href={href("/admin/keys", { status: "all", label: r.agent_run_label })} title="Keys of this run" safe>
          {r.agent_run_label}
        </a>
        <div class="sub">
          <span safe>{`${keysText} · ${r.vendors.join(", ")}`}</span> · <a href={href("/admin/audit", { label: r.agent_run_label })}>calls</a> ·{" "}
          <a href={href("/admin/spend", { label: r.agent_run_label })}>spend</a>
        </div>
      </td>
      <td class="spend-col" data-label="Spent today / cap">
        <SpendMeter spent={r.spent_today_usd} reserved={r.reserved_usd} cap={r.daily_cap_usd} name={`run ${r.agent_run_label}`} />
        {r.total_cap_usd !== null && r.total_cap_usd !== r.daily_cap_usd ? (
          <div class="sub" safe>{`${usd(r.spent_total_usd)} of ${usd(r.total_cap_usd)} over the run`}</div>
        ) : r.spent_total_usd !== r.spent_today_usd ? (
          <div class="sub" safe>{`${usd(r.spent_total_usd)} over the run`}</div>
        ) : (
          ""
        )}
      </td>
      <td class="num" data-label="Calls">
        {String(r.calls)}
        {r.refused ? <div class="sub" safe>{`${r.refused} refused`}</div> : ""}
      </td>
      <td class="num" data-label="Cap hits">
        {r.cap_hits ? <Badge tone="warn" text={String(r.cap_hits)} /> : "0"}
      </td>
      <td data-label="Last call">{r.last_call_at ? <Time at={r.last_call_at} text={relative(r.last_call_at, now)} /> : <span class="muted">no calls</span>}</td>
      <td data-label="Status">
        <Badge tone={STATUS_TONE[r.status] ?? "muted"} text={r.status} />
        {r.status === "active" && r.active_keys < r.keys ? <div class="sub">{`${r.active_keys} of ${r.keys} live`}</div> : ""}
      </td>
      <td class="actions">
        <a class="btn ghost small" href={`/admin/keys/${encodeURIComponent(r.newest_key_id)}/edit`}>
          Edit caps
        </a>
        {r.active_keys > 0 ? (
          <form
            class="row-form"
            method="post"
            action="/admin/runs/revoke"
            hx-post="/admin/runs/revoke"
            hx-target="closest tr"
            hx-swap="outerHTML"
            hx-confirm={`Revoke run “${r.agent_run_label}”? Its ${r.active_keys === 1 ? "1 live key stops" : `${r.active_keys} live keys stop`} working at once; their next calls are refused.`}
          >
            {csrf ? <CsrfField token={csrf} /> : ""}
            <input type="hidden" name="agent_run_label" value={r.agent_run_label} />
            <button class="btn danger small" type="submit" aria-label={`Revoke run ${r.agent_run_label}`}>
              Revoke run
            </button>
          </form>
        ) : (
          <StoppedSlot text={r.status === "revoked" ? "Revoked" : "Stopped"} />
        )}
      </td>
    </tr>
  );
}

/** A stable, attribute-safe element id for a run label (labels are free text). */
export function runDomId(label: string): string {
  let h = 0x811c9dc5;
  for (const ch of label) h = Math.imul(h ^ ch.codePointAt(0)!, 0x01000193) >>> 0;
  return h.toString(36);
}

export function KeyRow({ k, now, csrf }: { k: KeyView; now: number; csrf?: string }) {
  return (
    <tr id={`key-${k.key_id}`} class={k.status === "active" ? "" : "inactive"}>
      <td class="run">
        <a class="label-text" href={href("/admin/audit", { label: k.agent_run_label })} title="Audit log of this run" safe>
          {k.agent_run_label}
        </a>
        <div class="sub mono">
          <a href={href("/admin/audit", { key_id: k.key_id })} title="Audit log of this key" safe>
            {k.key_id}
          </a>{" "}
          <span class="hint-inline" safe>{`${k.key_hint}…`}</span>
        </div>
        <div class="sub endpoints mono" safe>
          {k.allowed_endpoints.join(" · ")}
        </div>
      </td>
      <td data-label="Vendor">
        <span class="vendor-name" safe>
          {k.vendor}
        </span>
      </td>
      <td class="spend-col" data-label="Spend today">
        <SpendMeter spent={k.spent_today_usd} reserved={k.reserved_usd} cap={k.daily_usd_cap} name={k.key_id} />
        {k.total_usd_cap !== null ? (
          <div class="sub" safe>
            {`lifetime ${usd(k.spent_total_usd)} of ${usd(k.total_usd_cap)}`}
          </div>
        ) : (
          ""
        )}
      </td>
      <td data-label="Expires">{k.expires_at ? <Time at={k.expires_at} text={relative(k.expires_at, now)} /> : "—"}</td>
      <td data-label="Status">
        <Badge tone={STATUS_TONE[k.status] ?? "muted"} text={k.status} />
        {k.revoked_at ? (
          <div class="sub">
            <Time at={k.revoked_at} text={relative(k.revoked_at, now)} />
          </div>
        ) : (
          ""
        )}
      </td>
      <td class="actions">
        <a class="btn ghost small" href={`/admin/keys/${encodeURIComponent(k.key_id)}/edit`}>
          Edit caps
        </a>
        {k.status === "active" ? (
          <form
            class="row-form"
            method="post"
            action={`/admin/keys/${encodeURIComponent(k.key_id)}/revoke`}
            hx-post={`/admin/keys/${encodeURIComponent(k.key_id)}/revoke`}
            hx-confirm={`Revoke key ${k.key_hint}… of run “${k.agent_run_label}”? Its next call will be refused.`}
            hx-target="closest tr"
            hx-swap="outerHTML"
          >
            {csrf ? <CsrfField token={csrf} /> : ""}
            <button class="btn danger small" type="submit" aria-label={`Revoke key ${k.key_id}`}>
              Revoke
            </button>
          </form>
        ) : (
          <StoppedSlot text={k.status === "revoked" ? "Revoked" : "Expired"} />
        )}
      </td>
    </tr>
  );
}

/** Where the revoke button was: the same room, so nothing else in the row slides under the pointer. */
function StoppedSlot({ text }: { text: string }) {
  return (
    <span class="btn small stopped" aria-hidden="true" safe>
      {text}
    </span>
  );
}

/** The flash toast, swapped in out of band next to the row a destructive action changed (the rows do not move). */
export function Acknowledge({ text, tone = "ok" }: { text: string; tone?: "ok" | "danger" }) {
  return (
    <div id="flash" hx-swap-oob="innerHTML">
      <Notice tone={tone}>
        <p safe>{text}</p>
      </Notice>
    </div>
  );
}

export function IssuePanel({ csrf, state, unconfigured = [] }: { csrf: string; state: IssueFormState; unconfigured?: readonly string[] }) {
  const v = state.values;
  const e = state.errors;
  const errorCount = Object.keys(e).length;
  return (
    <div id="issue-panel">
      {state.issued ? <IssuedKeyNotice issued={state.issued} /> : ""}
      <form class="issue-form" method="post" action="/admin/keys" hx-post="/admin/keys" hx-target="#issue-panel" hx-swap="outerHTML" novalidate>
        <CsrfField token={csrf} />
        {errorCount ? (
          <Notice tone="danger">
            <p safe>{e["(body)"] ?? `Fix the ${errorCount === 1 ? "field" : `${errorCount} fields`} marked below; nothing was issued.`}</p>
          </Notice>
        ) : (
          ""
        )}
        {unconfigured.length ? (
          <Notice tone="info">
            <p>
              <span safe>{`No secret is configured for ${unconfigured.join(", ")}: a key for ${unconfigured.length === 1 ? "it" : "them"} is refused upstream until one is set on `}</span>
              <a href="/admin/vendors">Vendors</a>.
            </p>
          </Notice>
        ) : (
          ""
        )}
        <div class="grid">
          <TextField
            name="agent_run_label"
            label="Run label"
            value={v.agent_run_label}
            error={e.agent_run_label}
            placeholder="airflow-billing/scheduled__2026-11-22"
            required
            class="span-2"
          />
          <SelectField name="vendor" label="Vendor" value={v.vendor ?? "stripe"} error={e.vendor} options={VENDORS} />
          <TextField name="daily_usd_cap" label="Daily cap (USD)" value={v.daily_usd_cap} error={e.daily_usd_cap} placeholder="$500.00" inputmode="decimal" required />
          <TextField
            name="total_usd_cap"
            label="Lifetime cap (USD, optional)"
            value={v.total_usd_cap}
            error={e.total_usd_cap}
            hint="The run's whole budget: a run that crosses UTC midnight gets a fresh daily cap, not a fresh budget."
            inputmode="decimal"
          />
          <TextField name="expires_in" label="Expires in" value={v.expires_in ?? "4h"} error={e.expires_in} hint="30s, 15m, 4h or 7d" required />
          <TextArea
            name="allowed_endpoints"
            label="Allowed endpoints"
            value={v.allowed_endpoints}
            error={e.allowed_endpoints}
            rows={3}
            placeholder="POST /v1/payment_intents"
            hint='One "METHOD /path" per line. * in a path matches one segment; method * matches any method.'
            required
            class="span-2"
          />
        </div>
        <details class="more" open={Boolean(e.dedupe_window || e.metadata || e.require_idempotency_key || e.allow_unpriced)}>
          <summary>More options</summary>
          <div class="grid">
            <TextField name="dedupe_window" label="Dedupe window (optional)" value={v.dedupe_window} error={e.dedupe_window} hint="Replay identical requests inside this window, e.g. 10m" />
            <TextArea name="metadata" label="Metadata (optional JSON object)" value={v.metadata} error={e.metadata} rows={2} placeholder='{"team": "billing"}' />
            <Checkbox name="require_idempotency_key" label="Require an Idempotency-Key on writes" checked={Boolean(v.require_idempotency_key)} error={e.require_idempotency_key} />
            <Checkbox name="allow_unpriced" label="Allow writes with no price rule (counted at $0)" checked={Boolean(v.allow_unpriced)} error={e.allow_unpriced} />
          </div>
        </details>
        <div class="form-actions">
          <button class="btn primary" type="submit">
            Issue key
          </button>
        </div>
      </form>
    </div>
  );
}

function IssuedKeyNotice({ issued }: { issued: IssuedKey }) {
  const k = issued.key;
  return (
    <div class="notice ok issued" role="status" tabindex="-1" data-autofocus>
      <p class="notice-title">
        Key issued for run <span class="label-text" safe>{`“${k.agent_run_label}”`}</span>
      </p>
      <p>This is the only time the vault key is shown. Give it to the run as its API key and point the SDK at the proxy URL.</p>
      {issued.vendorUnconfigured ? (
        <p class="warn-text">
          <span safe>{`${k.vendor} has no secret configured yet: this key's calls fail until you set one on `}</span>
          <a href="/admin/vendors">Vendors</a>.
        </p>
      ) : (
        ""
      )}
      <div class="copy-row">
        <label class="sr-only" for="new-vault-key">
          Vault key
        </label>
        <input id="new-vault-key" class="mono" type="text" readonly value={issued.vaultKey} spellcheck="false" />
        <button class="btn" type="button" data-copy="new-vault-key">
          Copy
        </button>
      </div>
      <dl class="facts">
        <div>
          <dt>Key id</dt>
          <dd class="mono" safe>
            {k.key_id}
          </dd>
        </div>
        <div>
          <dt>Proxy base URL</dt>
          <dd class="mono" safe>
            {`${issued.proxyBaseUrl}/${k.vendor}`}
          </dd>
        </div>
        <div>
          <dt>Daily cap</dt>
          <dd safe>{usd(k.daily_usd_cap)}</dd>
        </div>
        <div>
          <dt>Expires</dt>
          <dd>
            <Time at={k.expires_at} />
          </dd>
        </div>
      </dl>
    </div>
  );
}

/** What the flash area says after revoking a run. */
export function runRevokedText({ label, revoked, total }: { label: string; revoked: number; total: number }): string {
  if (total === 0) return `No keys have the run label “${label}”.`;
  if (revoked === 0) return `Every key of run “${label}” was already revoked.`;
  return `Revoked ${revoked} ${revoked === 1 ? "key" : "keys"} of run “${label}”: their next calls are refused. The run stays listed, as revoked.`;
}
