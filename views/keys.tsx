import type { presentKey } from "../src/domain/keys.ts";
import type { FieldErrors, FormValues } from "../src/http/admin-forms.ts";
import { VENDORS } from "../src/vendors/types.ts";
import { Badge, Checkbox, Notice, SelectField, TextArea, TextField, type Tone } from "./components.tsx";
import { href, relative, usd, utc } from "./format.ts";
import { CsrfField, Layout } from "./layout.tsx";

export type KeyView = ReturnType<typeof presentKey> & {
  spent_today_usd: number;
  reserved_usd: number;
  remaining_today_usd: number;
  spent_total_usd: number;
};

export type KeyTab = "active" | "revoked" | "expired" | "all";

export interface KeysFilter {
  status: KeyTab;
  label?: string;
  vendor?: string;
  cursor?: string;
}

export interface KeysTableData {
  filter: KeysFilter;
  counts: Record<"active" | "revoked" | "expired", number>;
  keys: KeyView[];
  nextCursor: string | null;
  now: number;
}

export interface IssuedKey {
  key: KeyView;
  vaultKey: string;
  proxyBaseUrl: string;
}

export interface IssueFormState {
  values: FormValues;
  errors: FieldErrors;
  issued?: IssuedKey;
}

const STATUS_TONE: Record<string, Tone> = { active: "ok", revoked: "danger", expired: "muted" };

const TABS: { tab: KeyTab; label: string }[] = [
  { tab: "active", label: "Active" },
  { tab: "revoked", label: "Revoked" },
  { tab: "expired", label: "Expired" },
  { tab: "all", label: "All" },
];

export function KeysPage(p: { csrf: string; table: KeysTableData; issue: IssueFormState }) {
  const f = p.table.filter;
  const issueOpen = Boolean(p.issue.issued) || Object.keys(p.issue.errors).length > 0;
  return (
    <Layout title="Keys" section="keys" csrf={p.csrf}>
      <div class="page-head">
        <div>
          <h1>Vault keys</h1>
          <p class="lede">Spend today against each key's daily cap (UTC day). This list refreshes every 2 seconds.</p>
        </div>
      </div>

      <details class="card disclosure" id="issue" open={issueOpen}>
        <summary>
          <h2>Issue a key</h2>
        </summary>
        <IssuePanel csrf={p.csrf} state={p.issue} />
      </details>

      <form class="filters" method="get" action="/admin/keys" role="search" aria-label="Filter keys">
        <input type="hidden" name="status" value={f.status} />
        <TextField name="label" label="Run label" value={f.label} placeholder="exact label" idPrefix="kf" />
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

      <section class="card danger-zone" aria-labelledby="revoke-run-h">
        <h2 id="revoke-run-h">Revoke a whole run</h2>
        <p class="muted">Every key issued with this run label stops working at once, from any worker.</p>
        <RevokeRunForm csrf={p.csrf} label={f.label} />
      </section>
    </Layout>
  );
}

function StatusTabs({ filter, counts }: Pick<KeysTableData, "filter" | "counts">) {
  return (
    <nav class="tabs" aria-label="Key status">
      {TABS.map((t) => (
        <a href={href("/admin/keys", { status: t.tab, label: filter.label, vendor: filter.vendor })} aria-current={t.tab === filter.status ? "page" : undefined}>
          {t.label}
          {t.tab === "all" ? "" : <span class="count">{String(counts[t.tab])}</span>}
        </a>
      ))}
    </nav>
  );
}

/** The live part of the keys page (status tabs with counts, and the list): polled every 2 s and morphed in place. */
export function KeysTable({ filter, counts, keys, nextCursor, now }: KeysTableData) {
  const tabs = <StatusTabs filter={filter} counts={counts} />;
  if (!keys.length) {
    return (
      <>
        {tabs}
        <div class="empty card">
          <p>{filter.cursor ? "No older keys." : "No keys match."}</p>
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
            <KeyRow k={k} now={now} />
          ))}
        </tbody>
      </table>
      {nextCursor ? (
        <p class="pager">
          <a class="btn ghost small" href={href("/admin/keys", { status: filter.status, label: filter.label, vendor: filter.vendor, cursor: nextCursor })}>
            Older keys →
          </a>
        </p>
      ) : (
        ""
      )}
    </div>
    </>
  );
}

export function KeyRow({ k, now }: { k: KeyView; now: number }) {
  const used = k.spent_today_usd + k.reserved_usd;
  // A $0 cap still draws an (empty) bar; meter needs max > min.
  const max = Math.max(k.daily_usd_cap, used, 0.000001);
  return (
    <tr id={`key-${k.key_id}`}>
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
        <meter min="0" max={String(max)} low={String(max * 0.75)} high={String(max * 0.9)} optimum="0" value={String(used)} aria-label={`Spend today of ${k.key_id}`}>
          {usd(used)}
        </meter>
        <div class="amount">
          <strong class="spent" safe>
            {usd(k.spent_today_usd)}
          </strong>{" "}
          <span class="muted" safe>{`of ${usd(k.daily_usd_cap)}`}</span>
        </div>
        {k.reserved_usd > 0 ? (
          <div class="sub" safe>
            {`+ ${usd(k.reserved_usd)} reserved in flight`}
          </div>
        ) : (
          ""
        )}
        {k.total_usd_cap !== null ? (
          <div class="sub" safe>
            {`lifetime ${usd(k.spent_total_usd)} of ${usd(k.total_usd_cap)}`}
          </div>
        ) : (
          ""
        )}
      </td>
      <td data-label="Expires">
        <time datetime={k.expires_at ?? ""} title={utc(k.expires_at)} safe>
          {k.expires_at ? relative(k.expires_at, now) : "—"}
        </time>
      </td>
      <td data-label="Status">
        <Badge tone={STATUS_TONE[k.status] ?? "muted"} text={k.status} />
        {k.revoked_at ? (
          <div class="sub" title={utc(k.revoked_at)} safe>
            {relative(k.revoked_at, now)}
          </div>
        ) : (
          ""
        )}
      </td>
      <td class="actions">
        {k.status === "active" ? (
          <button
            class="btn danger small"
            type="button"
            hx-delete={`/admin/keys/${encodeURIComponent(k.key_id)}`}
            hx-confirm={`Revoke key ${k.key_hint}… of run “${k.agent_run_label}”? Its next call will be refused.`}
            hx-target="closest tr"
            hx-swap="outerHTML"
            aria-label={`Revoke key ${k.key_id}`}
          >
            Revoke
          </button>
        ) : (
          ""
        )}
      </td>
    </tr>
  );
}

export function IssuePanel({ csrf, state }: { csrf: string; state: IssueFormState }) {
  const v = state.values;
  const e = state.errors;
  return (
    <div id="issue-panel">
      {state.issued ? <IssuedKeyNotice issued={state.issued} /> : ""}
      <form class="issue-form" method="post" action="/admin/keys" hx-post="/admin/keys" hx-target="#issue-panel" hx-swap="outerHTML" novalidate>
        <CsrfField token={csrf} />
        {e["(body)"] ? (
          <Notice tone="danger">
            <p safe>{e["(body)"]}</p>
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
          <TextField name="daily_usd_cap" label="Daily cap (USD)" value={v.daily_usd_cap} error={e.daily_usd_cap} placeholder="500.00" inputmode="decimal" required />
          <TextField
            name="total_usd_cap"
            label="Lifetime cap (USD, optional)"
            value={v.total_usd_cap}
            error={e.total_usd_cap}
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
          <dd safe>{utc(k.expires_at)}</dd>
        </div>
      </dl>
    </div>
  );
}

export function RevokeRunForm({ csrf, label }: { csrf: string; label?: string }) {
  return (
    <form
      class="inline-form"
      method="post"
      action="/admin/runs/revoke"
      hx-post="/admin/runs/revoke"
      hx-target="#flash"
      hx-confirm="Revoke every key of this run? Their next calls will be refused."
    >
      <CsrfField token={csrf} />
      <TextField name="agent_run_label" label="Run label" value={label} placeholder="airflow-billing/scheduled__2026-11-22" idPrefix="rr" required />
      <button class="btn danger" type="submit">
        Revoke run
      </button>
    </form>
  );
}

/** What the flash area says after revoking a run. */
export function RunRevoked({ label, revoked, total }: { label: string; revoked: number; total: number }) {
  const text =
    total === 0
      ? `No keys have the run label “${label}”.`
      : revoked === 0
        ? `Every key of run “${label}” was already revoked.`
        : `Revoked ${revoked} ${revoked === 1 ? "key" : "keys"} of run “${label}”.`;
  return (
    <Notice tone={total === 0 ? "danger" : "ok"}>
      <p safe>{text}</p>
    </Notice>
  );
}
