import type { VendorStatus } from "../src/domain/secrets.ts";
import type { ConnectionCheck } from "../src/domain/vendor-check.ts";
import type { FieldErrors } from "../src/http/admin-forms.ts";
import type { VendorName } from "../src/vendors/types.ts";
import { Badge, FormError, Notice, TextField } from "./components.tsx";
import { utc } from "./format.ts";
import { CsrfField, Layout } from "./layout.tsx";

const VENDOR_NAME: Record<VendorName, string> = { stripe: "Stripe", twilio: "Twilio", resend: "Resend" };

/** How each secret field is labelled; the Account SID is an identifier, not a secret, so it is typed in the clear. */
const FIELD: Record<string, { label: string; type: "text" | "password"; placeholder: string }> = {
  secret_key: { label: "Secret key", type: "password", placeholder: "sk_live_… or rk_live_…" },
  account_sid: { label: "Account SID", type: "text", placeholder: "AC…" },
  auth_token: { label: "Auth token", type: "password", placeholder: "" },
  api_key: { label: "API key", type: "password", placeholder: "re_…" },
};

export interface VendorCardData {
  status: VendorStatus;
  baseUrl: string;
  errors?: FieldErrors;
  saved?: boolean;
}

export function VendorsPage({ csrf, vendors }: { csrf: string; vendors: VendorCardData[] }) {
  return (
    <Layout title="Vendors" section="vendors" csrf={csrf}>
      <div class="page-head">
        <div>
          <h1>Vendor secrets</h1>
          <p class="lede">The real credentials live only here, encrypted at rest. They are write-only: only the last 4 characters are ever shown.</p>
        </div>
      </div>
      <div class="vendor-grid">
        {vendors.map((v) => (
          <VendorCard csrf={csrf} {...v} />
        ))}
      </div>
    </Layout>
  );
}

export function VendorCard({ csrf, status, baseUrl, errors = {}, saved }: VendorCardData & { csrf: string }) {
  const v = status.vendor;
  const hasErrors = Object.keys(errors).length > 0;
  return (
    <section class="card vendor" id={`vendor-${v}`} aria-labelledby={`vendor-${v}-h`}>
      <div class="vendor-head">
        <h2 id={`vendor-${v}-h`}>{VENDOR_NAME[v]}</h2>
        {status.managed_by_env ? (
          <Badge tone="ok" text="Managed by the environment" />
        ) : status.configured ? (
          <Badge tone="ok" text="Configured" />
        ) : (
          <Badge tone="muted" text="Not configured" />
        )}
      </div>
      {saved ? (
        <Notice tone="ok">
          <p>Secret saved. New calls use it at once.</p>
        </Notice>
      ) : (
        ""
      )}
      <dl class="facts">
        {Object.entries(status.fields).map(([name, f]) => (
          <div>
            <dt safe>{FIELD[name]?.label ?? name}</dt>
            <dd class="mono" safe>
              {f ? `•••• ${f.last4}` : "not set"}
            </dd>
          </div>
        ))}
        <div>
          <dt>Updated</dt>
          <dd safe>{status.updated_at ? utc(status.updated_at) : "never"}</dd>
        </div>
        <div>
          <dt>Upstream</dt>
          <dd class="mono small" safe>
            {baseUrl}
          </dd>
        </div>
      </dl>

      <div class="check-row">
        <button
          class="btn"
          type="button"
          hx-post={`/admin/vendors/${v}/test`}
          hx-target={`#check-${v}`}
          hx-disable="this"
          disabled={!status.configured}
          aria-describedby={`check-${v}`}
        >
          Test connection
        </button>
        <div id={`check-${v}`} class="check-result" aria-live="polite"></div>
      </div>

      {status.managed_by_env ? (
        <p class="small">Set by environment variables: change it there and restart Keybrake. It cannot be changed here.</p>
      ) : (
        <details class="more" open={hasErrors || !status.configured}>
          <summary>{status.configured ? "Rotate secret" : "Set secret"}</summary>
          <form
            class="stack"
            method="post"
            action={`/admin/vendors/${v}`}
            hx-post={`/admin/vendors/${v}`}
            hx-target={`#vendor-${v}`}
            hx-swap="outerHTML"
            novalidate
          >
            <CsrfField token={csrf} />
            <FormError text={errors["(body)"]} />
            {Object.keys(status.fields).map((name) => (
              <TextField
                name={name}
                label={FIELD[name]?.label ?? name}
                type={FIELD[name]?.type ?? "password"}
                placeholder={FIELD[name]?.placeholder}
                autocomplete="off"
                error={errors[name]}
                idPrefix={v}
                required
              />
            ))}
            <div class="form-actions">
              <button class="btn primary" type="submit">
                Save secret
              </button>
            </div>
          </form>
        </details>
      )}
    </section>
  );
}

export function ConnectionResult({ check }: { check: ConnectionCheck }) {
  if (check.ok) {
    return (
      <p class="check ok" role="status" safe>
        {`Connected: HTTP ${check.status} in ${check.latencyMs} ms.`}
      </p>
    );
  }
  return (
    <p class="check danger" role="alert" safe>
      {check.message}
    </p>
  );
}
