import { Elysia } from "elysia";
import { z } from "zod";
import { presentBudget } from "../domain/budgets.ts";
import { actorOf } from "../domain/tokens.ts";
import { presentWebhook } from "../domain/webhooks.ts";
import { fieldIssues, validationError } from "../errors.ts";
import type { Services } from "../services.ts";
import { authorize } from "./auth.ts";
import { queryObject, readJson } from "./request.ts";

const ADMIN = ["admin"] as const;
const READERS = ["admin", "viewer"] as const;

const BudgetListQuery = z.strictObject({ include_deleted: z.enum(["true", "false"]).optional() });
const DeliveriesQuery = z.strictObject({
  cursor: z.string().max(64).optional(),
  limit: z.coerce.number().int().min(1).max(500).default(100),
});

function parse<T extends z.ZodType>(schema: T, input: unknown): z.infer<T> {
  const r = schema.safeParse(input);
  if (!r.success) throw validationError(fieldIssues(r.error.issues));
  return r.data;
}

/**
 * /budgets and /webhooks (SPEC §7): thin handlers over BudgetService and WebhookService.
 * Only admin changes either; a viewer reads budgets.
 */
export function governanceRoutes(s: Services) {
  const maxBody = s.config.maxBodyBytes;
  const budgetView = async (id: string) => {
    const row = await s.budgets.get(id);
    return presentBudget(row, await s.budgets.spend(row));
  };
  return new Elysia({ name: "governance" })
    .post(
      "/budgets",
      async ({ request, set }) => {
        const who = await authorize(s, request, ADMIN);
        const row = await s.budgets.create(await readJson(request, maxBody), actorOf(who));
        set.status = 201;
        return presentBudget(row, await s.budgets.spend(row));
      },
      { parse: "none" },
    )
    .get("/budgets", async ({ request }) => {
      await authorize(s, request, READERS);
      const q = parse(BudgetListQuery, queryObject(request));
      const now = Date.now();
      const rows = await s.budgets.list({ includeDeleted: q.include_deleted === "true" });
      return { data: await Promise.all(rows.map(async (r) => presentBudget(r, await s.budgets.spend(r, now)))) };
    })
    .get("/budgets/:id", async ({ request, params }) => {
      await authorize(s, request, READERS);
      return await budgetView(params.id);
    })
    .patch(
      "/budgets/:id",
      async ({ request, params }) => {
        const who = await authorize(s, request, ADMIN);
        await s.budgets.update(params.id, await readJson(request, maxBody), actorOf(who));
        return await budgetView(params.id);
      },
      { parse: "none" },
    )
    .delete("/budgets/:id", async ({ request, params }) => {
      const who = await authorize(s, request, ADMIN);
      await s.budgets.remove(params.id, actorOf(who));
      return await budgetView(params.id);
    })
    .post(
      "/webhooks",
      async ({ request, set }) => {
        await authorize(s, request, ADMIN);
        const { row, secret } = await s.webhooks.create(await readJson(request, maxBody));
        set.status = 201;
        return { ...presentWebhook(row, { revealUrl: true }), secret };
      },
      { parse: "none" },
    )
    .get("/webhooks", async ({ request }) => {
      await authorize(s, request, ADMIN);
      return { data: (await s.webhooks.list()).map((w) => presentWebhook(w)) };
    })
    .get("/webhooks/:id", async ({ request, params }) => {
      await authorize(s, request, ADMIN);
      return presentWebhook(await s.webhooks.get(params.id));
    })
    .delete("/webhooks/:id", async ({ request, params }) => {
      await authorize(s, request, ADMIN);
      return presentWebhook(await s.webhooks.remove(params.id));
    })
    .get("/webhooks/:id/deliveries", async ({ request, params }) => {
      await authorize(s, request, ADMIN);
      const q = parse(DeliveriesQuery, queryObject(request));
      const { data, nextCursor } = await s.webhooks.deliveries(params.id, q);
      return { data, next_cursor: nextCursor };
    });
}
