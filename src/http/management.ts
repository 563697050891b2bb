import { Elysia } from "elysia";
import { z } from "zod";
import { parseAuditQuery, presentAudit } from "../domain/audit.ts";
import { presentKey } from "../domain/keys.ts";
import { utcDay } from "../domain/time.ts";
import { ApiError, fieldIssues, validationError } from "../errors.ts";
import type { Services } from "../services.ts";
import { VENDORS, type VendorName } from "../vendors/types.ts";
import { auditExportResponse } from "./audit-export.ts";
import { authorize } from "./auth.ts";
import { bearerToken, queryObject, readJson } from "./request.ts";

const KeyListQuery = z.strictObject({
  label: z.string().max(256).optional(),
  vendor: z.enum(VENDORS).optional(),
  status: z.enum(["active", "revoked", "expired"]).optional(),
  cursor: z.string().max(64).optional(),
  limit: z.coerce.number().int().min(1).max(500).default(100),
});

const SpendQuery = z.strictObject({
  since: z.string().optional(),
  until: z.string().optional(),
  label: z.string().max(256).optional(),
});

function parse<T extends z.ZodType>(schema: T, input: unknown): z.infer<T> {
  const r = schema.safeParse(input);
  if (!r.success) throw validationError(fieldIssues(r.error.issues));
  return r.data;
}

function vendorParam(v: string): VendorName {
  if (!(VENDORS as readonly string[]).includes(v)) throw new ApiError("not_found", `Unknown vendor "${v}"; one of ${VENDORS.join(", ")}.`);
  return v as VendorName;
}

function time(field: string, text: string | undefined, fallback: number): number {
  if (text === undefined) return fallback;
  const ms = Date.parse(text);
  if (Number.isNaN(ms)) throw validationError([{ field, message: `${field} must be an ISO 8601 time` }]);
  return ms;
}

/**
 * The management API (SPEC §2): thin handlers over the key, audit and secret
 * services. Every route here requires a management token.
 */
export function managementRoutes(s: Services, proxyBaseUrl: () => string) {
  const maxBody = s.config.maxBodyBytes;
  return new Elysia({ name: "management" })
    .onBeforeHandle(({ request }) => {
      if (!s.tokens.verify(bearerToken(request))) {
        throw new ApiError("unauthorized", "Send a management token as Authorization: Bearer <token> (a vault key is not one).");
      }
    })
    .post(
      "/vault/keys",
      async ({ request, set }) => {
        const { row, vaultKey } = s.keys.issue(await readJson(request, maxBody));
        set.status = 201;
        return { ...presentKey(row), vault_key: vaultKey, proxy_base_url: proxyBaseUrl() };
      },
      { parse: "none" },
    )
    .get("/vault/keys", ({ request }) => {
      const q = parse(KeyListQuery, queryObject(request));
      const { rows, nextCursor } = s.keys.list(q);
      return { data: rows.map((r) => presentKey(r)), next_cursor: nextCursor };
    })
    .post(
      "/vault/keys/revoke",
      async ({ request }) => {
        const body = parse(z.strictObject({ agent_run_label: z.string().min(1).max(256) }), await readJson(request, maxBody));
        const { rows, newlyRevoked } = s.keys.revokeByLabel(body.agent_run_label);
        return { agent_run_label: body.agent_run_label, revoked: newlyRevoked, data: rows.map((r) => presentKey(r)) };
      },
      { parse: "none" },
    )
    .get("/vault/keys/:key_id", ({ params }) => {
      const row = s.keys.get(params.key_id);
      return { ...presentKey(row), ...s.keys.spend(row) };
    })
    .delete("/vault/keys/:key_id", ({ params }) => {
      const row = s.keys.revoke(params.key_id);
      return { ...presentKey(row), ...s.keys.spend(row) };
    })
    .get("/vault/audit", ({ request }) => {
      const f = parseAuditQuery(queryObject(request));
      if (f.format === "json") {
        const { rows, nextCursor } = s.audit.page(f);
        return { data: rows.map(presentAudit), next_cursor: nextCursor };
      }
      return auditExportResponse(s.audit.all(f), f.format);
    })
    .get("/vault/spend", ({ request }) => {
      const q = parse(SpendQuery, queryObject(request));
      const now = Date.now();
      const since = time("since", q.since, Date.parse(utcDay(now) + "T00:00:00Z"));
      const until = time("until", q.until, now + 1);
      if (until <= since) throw validationError([{ field: "until", message: "until must be after since" }]);
      return s.audit.spend(since, until, q.label);
    })
    .get("/vendors", () => ({ data: VENDORS.map((v) => s.secrets.status(v)) }))
    .put(
      "/vendors/:vendor",
      async ({ params, request }) => {
        const vendor = vendorParam(params.vendor);
        const actor = authorize(s, request, ["admin"]);
        // Refused (409 managed_by_env) before the body is read when the environment owns the secret.
        s.secrets.set(vendor, await readJson(request, maxBody), actor);
        return s.secrets.status(vendor);
      },
      { parse: "none" },
    )
    .get("/metrics", () => {
      const counts = s.keys.countByStatus();
      const body = s.metrics.render({
        keybrake_vault_keys_active: counts.active,
        keybrake_vault_keys_revoked: counts.revoked,
        keybrake_vault_keys_expired: counts.expired,
        keybrake_uptime_seconds: Math.round((Date.now() - s.startedAt) / 1000),
      });
      return new Response(body, { headers: { "content-type": "text/plain; version=0.0.4" } });
    });
}

