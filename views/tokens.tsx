import type { presentToken } from "../src/domain/tokens.ts";
import type { FieldErrors, FormValues } from "../src/http/admin-forms.ts";
import { Badge, FormError, SelectField, TextArea, TextField, type Tone } from "./components.tsx";
import { relative, utc } from "./format.ts";
import { CsrfField, Layout } from "./layout.tsx";

export type TokenView = ReturnType<typeof presentToken>;

export interface TokenFormState {
  values: FormValues;
  errors: FieldErrors;
  /** Set once, right after creation: the only time the token is shown. */
  created?: { token: TokenView; secret: string };
}

const ROLE_TONE: Record<string, Tone> = { admin: "warn", issuer: "info", viewer: "muted" };

const POLICY_EXAMPLE = `{
  "vendors": ["stripe"],
  "label_prefix": "kestra/",
  "max_daily_usd_cap": 200,
  "max_total_usd_cap": 1000,
  "max_expires_in": "1d",
  "allowed_endpoints": ["POST /v1/payment_intents", "GET /v1/customers/*"]
}`;

/** Management tokens: who may use the API, with which role and policy (SPEC §7). */
export function TokensPage(p: { csrf: string; tokens: TokenView[]; form: TokenFormState; now: number }) {
  return (
    <Layout title="Tokens" section="tokens" csrf={p.csrf}>
      <div class="page-head">
        <div>
          <h1>Management tokens</h1>
          <p class="lede">
            An <strong>admin</strong> can do everything; an <strong>issuer</strong> issues and manages only its own keys, inside its policy; a{" "}
            <strong>viewer</strong> reads keys, audit, spend and events. The KEYBRAKE_ADMIN_TOKEN variable is not listed: unset it to retire it.
          </p>
        </div>
      </div>
      <section class="card" aria-labelledby="create-token-h">
        <h2 id="create-token-h">Create a token</h2>
        <TokenForm csrf={p.csrf} state={p.form} />
      </section>
      <div class="table-wrap card flush">
        <table class="data tokens cardify">
          <caption class="sr-only">Management tokens, newest first</caption>
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Role</th>
              <th scope="col">Policy</th>
              <th scope="col">Created</th>
              <th scope="col">Status</th>
              <th scope="col">
                <span class="sr-only">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {p.tokens.length === 0 ? (
              <tr>
                <td colspan="6" class="empty">
                  No stored tokens yet.
                </td>
              </tr>
            ) : (
              p.tokens.map((t) => <TokenRow t={t} now={p.now} />)
            )}
          </tbody>
        </table>
      </div>
    </Layout>
  );
}

function TokenForm({ csrf, state }: { csrf: string; state: TokenFormState }) {
  const v = state.values;
  const e = state.errors;
  return (
    <div id="token-panel">
      {state.created ? <CreatedToken created={state.created} /> : ""}
      <form class="token-form" method="post" action="/admin/tokens" novalidate>
        <CsrfField token={csrf} />
        <FormError text={e["(body)"]} />
        <div class="grid">
          <TextField name="name" label="Name" value={v.name} error={e.name} placeholder="kestra-prod" required idPrefix="tok" />
          <SelectField name="role" label="Role" value={v.role ?? "issuer"} error={e.role} options={["issuer", "viewer", "admin"]} idPrefix="tok" />
          <TextArea
            name="policy"
            label="Issuer policy (JSON)"
            value={v.policy}
            error={e.policy}
            rows={8}
            placeholder={POLICY_EXAMPLE}
            hint="Issuers only; max_daily_usd_cap is required. Every key the token issues or changes must fit it."
            class="span-2"
            idPrefix="tok"
          />
        </div>
        <div class="form-actions">
          <button class="btn primary" type="submit">
            Create token
          </button>
        </div>
      </form>
    </div>
  );
}

function CreatedToken({ created }: { created: NonNullable<TokenFormState["created"]> }) {
  const t = created.token;
  return (
    <div class="notice ok issued" role="status" tabindex="-1" data-autofocus>
      <p class="notice-title">
        Token created: <span safe>{`“${t.name}” (${t.role})`}</span>
      </p>
      <p>This is the only time the token is shown. Store it in the orchestrator's secret store now.</p>
      <div class="copy-row">
        <label class="sr-only" for="new-token">
          Management token
        </label>
        <input id="new-token" class="mono" type="text" readonly value={created.secret} spellcheck="false" />
        <button class="btn" type="button" data-copy="new-token">
          Copy
        </button>
      </div>
      <dl class="facts">
        <div>
          <dt>Token id</dt>
          <dd class="mono" safe>
            {t.token_id}
          </dd>
        </div>
      </dl>
    </div>
  );
}

export function TokenRow({ t, now }: { t: TokenView; now: number }) {
  return (
    <tr id={`token-${t.token_id}`}>
      <td class="run">
        <span class="label-text" safe>
          {t.name}
        </span>
        <div class="sub mono" safe>
          {t.token_id}
        </div>
      </td>
      <td data-label="Role">
        <Badge tone={ROLE_TONE[t.role] ?? "muted"} text={t.role} />
      </td>
      <td data-label="Policy">
        {t.policy ? (
          <pre class="policy mono" safe>
            {JSON.stringify(t.policy, null, 1)}
          </pre>
        ) : (
          <span class="muted">—</span>
        )}
      </td>
      <td data-label="Created">
        <time datetime={t.created_at} title={utc(t.created_at)} safe>
          {relative(t.created_at, now)}
        </time>
      </td>
      <td data-label="Status">
        <Badge tone={t.status === "active" ? "ok" : "danger"} text={t.status} />
        {t.revoked_at ? (
          <div class="sub" title={utc(t.revoked_at)} safe>
            {relative(t.revoked_at, now)}
          </div>
        ) : (
          ""
        )}
      </td>
      <td class="actions">
        {t.status === "active" ? (
          <button
            class="btn danger small"
            type="button"
            hx-delete={`/admin/tokens/${encodeURIComponent(t.token_id)}`}
            hx-confirm={`Revoke token “${t.name}”? Every request and admin session using it stops at once.`}
            hx-target="closest tr"
            hx-swap="outerHTML"
            aria-label={`Revoke token ${t.name}`}
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
