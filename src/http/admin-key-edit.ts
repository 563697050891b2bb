import { Elysia } from "elysia";
import { presentKey } from "../domain/keys.ts";
import { ApiError } from "../errors.ts";
import type { Services } from "../services.ts";
import { KeyEditNotFound, KeyEditPage, type KeyEditState } from "../../views/key-edit.tsx";
import { fieldErrorsOf, type FormValues } from "./admin-forms.ts";
import { adminSession } from "./admin-session.ts";
import { field, html } from "./admin-kit.ts";

const EDIT_FIELDS = ["daily_usd_cap", "total_usd_cap", "expires_in"] as const;

/** A number typed in a box stays text when it is not one, so validation names the field. */
const numberOrText = (t: string) => (Number.isFinite(Number(t)) ? Number(t) : t);

/** The PATCH body from the form: blank boxes are left out (unchanged). */
function patchFromForm(v: FormValues): Record<string, unknown> {
  const body: Record<string, unknown> = {};
  for (const name of EDIT_FIELDS) {
    const text = v[name]?.trim();
    if (text) body[name] = name === "expires_in" ? text : numberOrText(text);
  }
  return body;
}

/**
 * "Approve more spend" (/admin/keys/{key_id}/edit): one form raises a key's, or its whole run's,
 * daily and lifetime caps and expiry, through the same KeyService.update as PATCH /vault/keys.
 */
export function adminKeyEditRoutes(s: Services) {
  const render = async (csrf: string, keyId: string, state: KeyEditState, status = 200) => {
    const now = Date.now();
    const row = await s.keys.get(keyId);
    const runActiveKeys = (await s.keys.list({ label: row.agentRunLabel, status: "active", limit: 500 }, now)).rows.length;
    const k = { ...presentKey(row, now), ...(await s.keys.spend(row, now)) };
    return html(KeyEditPage({ csrf, k, runActiveKeys, state }), status);
  };
  const notFound = (csrf: string, keyId: string) => html(KeyEditNotFound({ csrf, keyId }), 404);

  return new Elysia()
    .use(adminSession(s))
    .get(
      "/keys/:key_id/edit",
      async ({ params, session }) => {
        try {
          const row = await s.keys.get(params.key_id);
          const values: FormValues = { daily_usd_cap: String(presentKey(row).daily_usd_cap) };
          return await render(session.csrfToken, params.key_id, { values, errors: {} });
        } catch (e) {
          if (e instanceof ApiError && e.code === "not_found") return notFound(session.csrfToken, params.key_id);
          throw e;
        }
      },
      { session: true },
    )
    .post(
      "/keys/:key_id/edit",
      async ({ params, body, session }) => {
        const values: FormValues = { scope: field(body, "scope") === "run" ? "run" : "key" };
        for (const name of EDIT_FIELDS) values[name] = field(body, name);
        const patch = patchFromForm(values);
        const by = session.principal; // the change and its key.updated event name the session's token
        try {
          const row = await s.keys.get(params.key_id);
          if (Object.keys(patch).length === 0) {
            return await render(session.csrfToken, params.key_id, { values, errors: { "(body)": "Fill in at least one of the boxes." } }, 422);
          }
          const count = values.scope === "run" ? (await s.keys.updateRun(row.agentRunLabel, patch, by)).length : (await s.keys.update(params.key_id, patch, by), 1);
          return await render(session.csrfToken, params.key_id, { values: { ...values, expires_in: undefined }, errors: {}, applied: { count, scope: values.scope as "key" | "run" } });
        } catch (e) {
          if (!(e instanceof ApiError)) throw e;
          if (e.code === "not_found") return notFound(session.csrfToken, params.key_id);
          if (e.code === "conflict") return render(session.csrfToken, params.key_id, { values, errors: { "(body)": e.message } }, 409);
          if (e.code === "invalid_request") return render(session.csrfToken, params.key_id, { values, errors: fieldErrorsOf(e) }, 422);
          throw e;
        }
      },
      { session: true },
    );
}
