import { Elysia } from "elysia";
import { actorOf, presentToken } from "../domain/tokens.ts";
import { ApiError } from "../errors.ts";
import type { Services } from "../services.ts";
import { FlashMessage } from "../../views/components.tsx";
import { TokenRow, TokensPage, type TokenFormState } from "../../views/tokens.tsx";
import { fieldErrorsOf, type FormValues } from "./admin-forms.ts";
import { adminSession } from "./admin-session.ts";
import { field, fragment, html } from "./admin-kit.ts";

/**
 * The admin Tokens page (SPEC §7): list with role and policy, create (the token shown once),
 * revoke. Only admin sessions exist, so every route here is admin-only by construction.
 * Mounted inside the /admin prefix by src/http/admin.ts.
 */
export function adminTokenRoutes(s: Services) {
  const page = async (csrf: string, form: TokenFormState, status = 200) =>
    html(TokensPage({ csrf, tokens: (await s.tokens.list()).map(presentToken), form, now: Date.now() }), status);

  return new Elysia()
    .use(adminSession(s))
    .get("/tokens", ({ session }) => page(session.csrfToken, { values: {}, errors: {} }), { session: true })
    .post(
      "/tokens",
      async ({ body, session }) => {
        const values: FormValues = { name: field(body, "name"), role: field(body, "role"), policy: field(body, "policy") };
        const policyText = values.policy?.trim();
        let policy: unknown;
        if (policyText) {
          try {
            policy = JSON.parse(policyText);
          } catch {
            return page(session.csrfToken, { values, errors: { policy: "The policy is not valid JSON." } }, 422);
          }
        }
        try {
          const { info, token } = await s.tokens.createFromBody({ name: values.name ?? "", role: values.role, policy }, actorOf(session.principal));
          return await page(session.csrfToken, { values: {}, errors: {}, created: { token: presentToken(info), secret: token } });
        } catch (e) {
          if (!(e instanceof ApiError) || e.code !== "invalid_request") throw e;
          return page(session.csrfToken, { values, errors: fieldErrorsOf(e) }, 422);
        }
      },
      { session: true },
    )
    .delete(
      "/tokens/:token_id",
      async ({ params, session }) => {
        try {
          const t = await s.tokens.revoke(params.token_id, actorOf(session.principal));
          return fragment(TokenRow({ t: presentToken(t), now: Date.now() }));
        } catch (e) {
          if (!(e instanceof ApiError) || e.code !== "not_found") throw e;
          return fragment(FlashMessage({ tone: "danger", text: `No management token ${params.token_id}.` }), 404, { "hx-retarget": "#flash", "hx-reswap": "innerHTML" });
        }
      },
      { session: true },
    );
}
