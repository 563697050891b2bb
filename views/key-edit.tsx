import type { FieldErrors, FormValues } from "../src/http/admin-forms.ts";
import { Badge, FormError, Notice, TextField } from "./components.tsx";
import { href, usd, utc } from "./format.ts";
import type { KeyView } from "./keys.tsx";
import { CsrfField, Layout } from "./layout.tsx";

export interface KeyEditState {
  values: FormValues;
  errors: FieldErrors;
  /** After a successful change: how many keys it was applied to. */
  applied?: { count: number; scope: "key" | "run" };
}

/**
 * "Approve more spend": raise one key's (or its whole run's) caps and expiry in one action.
 * Blank boxes leave a value as it is.
 */
export function KeyEditPage(p: { csrf: string; k: KeyView; runActiveKeys: number; state: KeyEditState }) {
  const { k, state } = p;
  const v = state.values;
  const e = state.errors;
  const action = `/admin/keys/${encodeURIComponent(k.key_id)}/edit`;
  return (
    <Layout title={`Edit caps · ${k.key_id}`} section="keys" csrf={p.csrf}>
      <div class="page-head">
        <div>
          <h1>Edit caps</h1>
          <p class="lede">
            Run <span class="label-text" safe>{`“${k.agent_run_label}”`}</span> · <span class="mono" safe>{k.key_id}</span> <Badge tone={k.status === "active" ? "ok" : "danger"} text={k.status} />
          </p>
        </div>
      </div>
      {state.applied ? (
        <Notice tone="ok" title="Caps changed">
          <p safe>{state.applied.scope === "run" ? `Applied to ${state.applied.count} active key(s) of the run. Their next call uses the new caps.` : "Applied to this key. Its next call uses the new caps."}</p>
        </Notice>
      ) : (
        ""
      )}
      <FormError text={e["(body)"]} />
      <section class="card" aria-labelledby="now-h">
        <h2 id="now-h">Now</h2>
        <dl class="facts">
          <div>
            <dt>Spent today</dt>
            <dd safe>{`${usd(k.spent_today_usd)} of ${usd(k.daily_usd_cap)} (+ ${usd(k.reserved_usd)} reserved)`}</dd>
          </div>
          <div>
            <dt>Lifetime</dt>
            <dd safe>{k.total_usd_cap === null ? `${usd(k.spent_total_usd)} (no lifetime cap)` : `${usd(k.spent_total_usd)} of ${usd(k.total_usd_cap)}`}</dd>
          </div>
          <div>
            <dt>Expires</dt>
            <dd safe>{utc(k.expires_at)}</dd>
          </div>
        </dl>
      </section>
      {k.status === "revoked" ? (
        <Notice tone="danger">
          <p>This key is revoked; a revoked key cannot be changed. Issue a new key for the run instead.</p>
        </Notice>
      ) : (
        <section class="card" aria-labelledby="edit-h">
          <h2 id="edit-h">New caps</h2>
          <form class="edit-form" method="post" action={action} novalidate>
            <CsrfField token={p.csrf} />
            <div class="grid">
              <TextField name="daily_usd_cap" label="Daily cap (USD)" value={v.daily_usd_cap} error={e.daily_usd_cap} inputmode="decimal" idPrefix="edit" />
              <TextField
                name="total_usd_cap"
                label="Lifetime cap (USD)"
                value={v.total_usd_cap}
                error={e.total_usd_cap}
                inputmode="decimal"
                hint="Blank: unchanged"
                idPrefix="edit"
              />
              <TextField name="expires_in" label="Expires in (from now)" value={v.expires_in} error={e.expires_in} hint="Blank: unchanged. 30m, 4h, 7d" idPrefix="edit" />
            </div>
            <fieldset class="scope">
              <legend>Apply to</legend>
              <div class="field check">
                <input type="radio" id="edit-scope-key" name="scope" value="key" checked={v.scope !== "run"} />
                <label for="edit-scope-key">this key only</label>
              </div>
              <div class="field check">
                <input type="radio" id="edit-scope-run" name="scope" value="run" checked={v.scope === "run"} />
                <label for="edit-scope-run" safe>
                  {`every active key of the run (${p.runActiveKeys})`}
                </label>
              </div>
            </fieldset>
            <div class="form-actions">
              <button class="btn primary" type="submit">
                Apply
              </button>
              <a class="btn ghost" href={href("/admin/keys", { label: k.agent_run_label, status: "all" })}>
                Back to keys
              </a>
            </div>
          </form>
        </section>
      )}
    </Layout>
  );
}

export function KeyEditNotFound({ csrf, keyId }: { csrf: string; keyId: string }) {
  return (
    <Layout title="No such key" section="keys" csrf={csrf}>
      <Notice tone="danger" title="No such key">
        <p safe>{`There is no vault key ${keyId}.`}</p>
      </Notice>
    </Layout>
  );
}
