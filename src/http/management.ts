import { Elysia } from "elysia";
import { z } from "zod";
import { parseAuditQuery, presentAudit } from "../domain/audit.ts";
import { EVENT_TYPES, presentEvent } from "../domain/events.ts";
import { presentKey } from "../domain/keys.ts";
import { actorOf, presentToken, type Principal } from "../domain/tokens.ts";
import { utcDay } from "../domain/time.ts";
import { ApiError, fieldIssues, validationError } from "../errors.ts";
import type { Services } from "../services.ts";
import { VENDORS, type VendorName } from "../vendors/types.ts";
import { auditExportResponse } from "./audit-export.ts";
import { ADMIN, authorize, KEY_READERS, KEY_WRITERS, OPERATOR_READERS } from "./auth.ts";
import { queryObject, readJson } from "./request.ts";

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

const isoTime = (field: string) =>
  z.string().transform((v, ctx) => {
    const ms = Date.parse(v);
    if (!/^\d{4}-\d{2}-\d{2}/.test(v) || Number.isNaN(ms)) {
      ctx.addIssue({ code: "custom", message: `${field} must be an ISO 8601 time like 2026-11-22T00:00:00Z` });
      return z.NEVER;
    }
    return ms;
  });

const EventQuery = z.strictObject({
  type: z.enum(EVENT_TYPES, { error: `type must be one of ${EVENT_TYPES.join(", ")}` }).optional(),
  since: isoTime("since").optional(),
  until: isoTime("until").optional(),
  cursor: z.string().max(64).optional(),
  limit: z.coerce.number().int().min(1).max(500).default(100),
});

/** An issuer reads only the audit and spend of keys it issued. */
const issuedBy = (p: Principal) => (p.role === "issuer" ? p.tokenId : undefined);

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
 * The management API (SPEC §2, §7): thin handlers over the key, token, audit, event and
 * secret services. Every route authorizes a management token with a fitting role.
 */
export function managementRoutes(s: Services, proxyBaseUrl: () => string) {
  const maxBody = s.config.maxBodyBytes;
  return new Elysia({ name: "management" })
    // Each route authorizes its own roles (SPEC §7); the matrix is in README "Tokens, roles and policies".
    .post(
      "/vault/keys",
      async ({ request, set }) => {
        const by = await authorize(s, request, KEY_WRITERS);
        const { row, vaultKey } = await s.keys.issue(await readJson(request, maxBody), by);
        set.status = 201;
        return { ...presentKey(row), vault_key: vaultKey, proxy_base_url: proxyBaseUrl() };
      },
      { parse: "none" },
    )
    .get("/vault/keys", async ({ request }) => {
      const by = await authorize(s, request, KEY_READERS);
      const q = parse(KeyListQuery, queryObject(request));
      const { rows, nextCursor } = await s.keys.list(q, Date.now(), by);
      return { data: rows.map((r) => presentKey(r)), next_cursor: nextCursor };
    })
    .post(
      "/vault/keys/revoke",
      async ({ request }) => {
        const by = await authorize(s, request, KEY_WRITERS);
        const body = parse(z.strictObject({ agent_run_label: z.string().min(1).max(256) }), await readJson(request, maxBody));
        const { rows, newlyRevoked } = await s.keys.revokeByLabel(body.agent_run_label, by);
        return { agent_run_label: body.agent_run_label, revoked: newlyRevoked, data: rows.map((r) => presentKey(r)) };
      },
      { parse: "none" },
    )
    .get("/vault/keys/:key_id", async ({ params, request }) => {
      const row = await s.keys.get(params.key_id, await authorize(s, request, KEY_READERS));
      return { ...presentKey(row), ...(await s.keys.spend(row)) };
    })
    .patch(
      "/vault/keys/:key_id",
      async ({ params, request }) => {
        const by = await authorize(s, request, KEY_WRITERS);
        const row = await s.keys.update(params.key_id, await readJson(request, maxBody), by);
        return { ...presentKey(row), ...(await s.keys.spend(row)) };
      },
      { parse: "none" },
    )
    .delete("/vault/keys/:key_id", async ({ params, request }) => {
      const row = await s.keys.revoke(params.key_id, await authorize(s, request, KEY_WRITERS));
      return { ...presentKey(row), ...(await s.keys.spend(row)) };
    })
    .get("/vault/audit", async ({ request }) => {
      const by = await authorize(s, request, KEY_READERS);
      const f = { ...parseAuditQuery(queryObject(request)), issuedBy: issuedBy(by) };
      if (f.format === "json") {
        const { rows, nextCursor } = await s.audit.page(f);
        return { data: rows.map(presentAudit), next_cursor: nextCursor };
      }
      return auditExportResponse(s.audit.all(f), f.format);
    })
    .get("/vault/spend", async ({ request }) => {
      const by = await authorize(s, request, KEY_READERS);
      const q = parse(SpendQuery, queryObject(request));
      const now = Date.now();
      const since = time("since", q.since, Date.parse(utcDay(now) + "T00:00:00Z"));
      const until = time("until", q.until, now + 1);
      if (until <= since) throw validationError([{ field: "until", message: "until must be after since" }]);
      return await s.audit.spend(since, until, q.label, issuedBy(by));
    })
    .post(
      "/tokens",
      async ({ request, set }) => {
        const by = await authorize(s, request, ADMIN);
        const { info, token } = await s.tokens.createFromBody(await readJson(request, maxBody), actorOf(by));
        set.status = 201;
        return { ...presentToken(info), token };
      },
      { parse: "none" },
    )
    .get("/tokens", async ({ request }) => {
      await authorize(s, request, ADMIN);
      return { data: (await s.tokens.list()).map(presentToken) };
    })
    .delete("/tokens/:token_id", async ({ params, request }) => {
      const by = await authorize(s, request, ADMIN);
      return presentToken(await s.tokens.revoke(params.token_id, actorOf(by)));
    })
    .get("/events", async ({ request }) => {
      // Issuers are refused: the trail names other tokens and their keys.
      await authorize(s, request, OPERATOR_READERS);
      const q = parse(EventQuery, queryObject(request));
      if (q.since !== undefined && q.until !== undefined && q.until <= q.since) throw validationError([{ field: "until", message: "until must be after since" }]);
      const { rows, nextCursor } = await s.events.list(q);
      return { data: rows.map(presentEvent), next_cursor: nextCursor };
    })
    .get("/vendors", async ({ request }) => {
      await authorize(s, request, OPERATOR_READERS);
      return { data: await Promise.all(VENDORS.map((v) => s.secrets.status(v))) };
    })
    .put(
      "/vendors/:vendor",
      async ({ params, request }) => {
        const actor = await authorize(s, request, ADMIN);
        const vendor = vendorParam(params.vendor);
        // Refused (409 managed_by_env) before the body is read when the environment owns the secret.
        await s.secrets.set(vendor, await readJson(request, maxBody), actorOf(actor));
        return await s.secrets.status(vendor);
      },
      { parse: "none" },
    )
    .get("/metrics", async ({ request }) => {
      await authorize(s, request, OPERATOR_READERS);
      const counts = await s.keys.countByStatus();
      const ledger = s.ledger.stats();
      const body = s.metrics.render(
        {
          keybrake_vault_keys_active: counts.active,
          keybrake_vault_keys_revoked: counts.revoked,
          keybrake_vault_keys_expired: counts.expired,
          keybrake_uptime_seconds: Math.round((Date.now() - s.startedAt) / 1000),
        },
        {
          keybrake_ledger_commits_total: ledger.commits,
          keybrake_ledger_writes_total: ledger.writes,
          keybrake_ledger_fsyncs_total: ledger.fsyncs,
          ...(ledger.batchedWrites === undefined ? {} : { keybrake_ledger_batched_writes_total: ledger.batchedWrites }),
          ...(ledger.batchRollbacks === undefined ? {} : { keybrake_ledger_batch_rollbacks_total: ledger.batchRollbacks }),
        },
      );
      return new Response(body, { headers: { "content-type": "text/plain; version=0.0.4" } });
    });
}

