import { Elysia } from "elysia";
import { z } from "zod";
import { issueKeySchema } from "../domain/keys.ts";
import type { Services } from "../services.ts";
import { VERSION } from "../version.ts";

const error = { $ref: "#/components/schemas/Error" };
const json = (schema: object) => ({ content: { "application/json": { schema } } });
const errors = { "400": { description: "Bad input; details names each field", ...json(error) }, "401": { description: "Missing or wrong management token", ...json(error) } };

/** The OpenAPI document of the management API; the request schema comes from the same zod schema that validates it. */
function openApi(maxTtlMs: number) {
  const issueInput = z.toJSONSchema(issueKeySchema(maxTtlMs), { io: "input", unrepresentable: "any" });
  return {
    openapi: "3.1.0",
    info: { title: "Keybrake management API", version: VERSION },
    components: {
      securitySchemes: { bearer: { type: "http", scheme: "bearer" } },
      schemas: {
        Error: {
          type: "object",
          properties: { error: { type: "object", properties: { code: { type: "string" }, message: { type: "string" }, details: {} } } },
        },
        IssueKey: issueInput,
      },
    },
    security: [{ bearer: [] }],
    paths: {
      "/vault/keys": {
        post: { summary: "Issue a vault key", requestBody: json({ $ref: "#/components/schemas/IssueKey" }), responses: { "201": { description: "The key; vault_key is shown only here" }, ...errors } },
        get: { summary: "List keys (label, vendor, status, cursor, limit)", responses: { "200": { description: "{data, next_cursor}" }, ...errors } },
      },
      "/vault/keys/{key_id}": {
        get: { summary: "A key with its spend", responses: { "200": { description: "The key" }, "404": { description: "No such key" } } },
        patch: { summary: "Change daily_usd_cap, total_usd_cap, expires_in (from now); bounded by an issuer's policy", responses: { "200": { description: "The key" }, "409": { description: "Revoked" }, ...errors } },
        delete: { summary: "Revoke a key (idempotent)", responses: { "200": { description: "The revoked key" }, "404": { description: "No such key" } } },
      },
      "/tokens": {
        post: { summary: "Create a management token {name, role, policy?} (admin); the token is shown only here", responses: { "201": { description: "The token" }, ...errors } },
        get: { summary: "List management tokens (admin; never the token)", responses: { "200": { description: "{data}" }, ...errors } },
      },
      "/tokens/{token_id}": { delete: { summary: "Revoke a token at once and end its admin sessions (admin; idempotent)", responses: { "200": { description: "The token" }, ...errors } } },
      "/events": { get: { summary: "Operator trail (type, since, until, cursor, limit; admin and viewer)", responses: { "200": { description: "{data, next_cursor}" }, ...errors } } },
      "/budgets": {
        post: { summary: "Create a pooled budget {name, label_prefix, daily_usd_cap, vendor?} (admin)", responses: { "201": { description: "The budget with its spend today" }, ...errors } },
        get: { summary: "Budgets with spent_today_usd, reserved_usd, remaining_today_usd (include_deleted; admin and viewer)", responses: { "200": { description: "{data}" }, ...errors } },
      },
      "/budgets/{budget_id}": {
        get: { summary: "A budget with its spend today (admin and viewer)", responses: { "200": { description: "The budget" }, ...errors } },
        patch: { summary: "Change name, label_prefix, daily_usd_cap, vendor (admin); applies to the next call", responses: { "200": { description: "The budget" }, "409": { description: "Deleted" }, ...errors } },
        delete: { summary: "Delete a budget: sets deleted_at (admin; idempotent)", responses: { "200": { description: "The budget" }, ...errors } },
      },
      "/webhooks": {
        post: { summary: "Create a webhook {url, events, thresholds?, format?: json|slack} (admin); the signing secret is shown only here", responses: { "201": { description: "The webhook and its secret" }, ...errors } },
        get: { summary: "List webhooks (admin; never the secret)", responses: { "200": { description: "{data}" }, ...errors } },
      },
      "/webhooks/{webhook_id}": {
        get: { summary: "A webhook (admin)", responses: { "200": { description: "The webhook" }, ...errors } },
        delete: { summary: "Delete a webhook (admin; idempotent); queued deliveries are not sent", responses: { "200": { description: "The webhook" }, ...errors } },
      },
      "/webhooks/{webhook_id}/deliveries": { get: { summary: "Deliveries, newest first, each with every attempt's status (cursor, limit; admin)", responses: { "200": { description: "{data, next_cursor}" }, ...errors } } },
      "/vault/keys/revoke": { post: { summary: "Revoke every key of a run ({agent_run_label})", responses: { "200": { description: "Revoked keys" }, ...errors } } },
      "/vault/audit": { get: { summary: "Audit log (key_id, label, vendor, outcome, since, until, cursor, limit, format=json|csv|jsonl)", responses: { "200": { description: "Rows" }, ...errors } } },
      "/vault/spend": { get: { summary: "Spend per label and key over [since, until) (default: today UTC)", responses: { "200": { description: "Totals" }, ...errors } } },
      "/vendors": { get: { summary: "Vendor secrets: configured, last 4, updated_at", responses: { "200": { description: "Status" } } } },
      "/vendors/{vendor}": { put: { summary: "Set or rotate a vendor secret (write-only)", responses: { "200": { description: "Status" }, "409": { description: "managed_by_env: set by environment variables", ...json(error) }, ...errors } } },
      "/metrics": { get: { summary: "Prometheus metrics", responses: { "200": { description: "text/plain" } } } },
      "/healthz": { get: { summary: "Liveness and database check", security: [], responses: { "200": { description: "ok" }, "503": { description: "draining: shutting down, send elsewhere" } } } },
    },
  };
}

export function opsRoutes(s: Services) {
  const doc = openApi(s.config.maxKeyTtlMs);
  return new Elysia({ name: "ops" })
    .get("/healthz", async () => {
      // Draining: still answering, but a load balancer must stop sending new calls here.
      if (s.lifecycle.draining) return Response.json({ status: "draining", version: VERSION }, { status: 503 });
      // SPEC §8: which ledger backend serves this process (and, by answering, that it is reachable).
      const backend = s.backend.kind;
      try {
        await s.ping();
      } catch {
        // Unreachable: no call that moves money can be admitted here, so take this replica out of rotation.
        return Response.json({ status: "unavailable", version: VERSION, ledger: { backend, reachable: false } }, { status: 503 });
      }
      return { status: "ok", version: VERSION, ledger: { backend, reachable: true } };
    })
    // A browser pointed at Keybrake lands on the admin pages.
    .get("/", () => new Response(null, { status: 302, headers: { location: "/admin" } }))
    .get("/openapi.json", () => doc);
}
