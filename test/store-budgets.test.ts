/**
 * Budgets on both backends: BudgetService over the store of each (src/store/{sqlite,pg}/budgets.ts),
 * one table of behaviour run over BACKENDS — the same rows, errors and budget.updated events.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { BudgetService } from "../src/domain/budgets.ts";
import type { Stores } from "../src/store/index.ts";
import { BACKENDS, openTestBackend } from "./backends.ts";
import { replica } from "./store-replicas.ts";

const actor = { tokenId: "tok_ops", name: "ops" };
const DAY = Date.UTC(2026, 10, 22, 12);

describe.each(BACKENDS)("budgets on %s", (kind) => {
  let backend: Awaited<ReturnType<typeof openTestBackend>>;
  let stores: Stores;
  let budgets: BudgetService;
  beforeAll(async () => {
    backend = await openTestBackend(kind, "budgets");
    stores = replica(backend).stores;
    budgets = new BudgetService(stores.budgets);
  }, 60_000); // the first PostgreSQL test of a run starts the cluster
  afterAll(() => backend.close());

  const trail = async (id: string) => (await stores.events.list({ type: "budget.updated", limit: 100 })).rows.filter((e) => e.target === id).reverse();

  test("create stores the budget with its event; list is newest first and hides deleted ones unless asked", async () => {
    const a = await budgets.create({ name: "billing", label_prefix: "billing/", daily_usd_cap: 12.5 }, actor, DAY);
    const b = await budgets.create({ name: "sms", label_prefix: "sms/", daily_usd_cap: 1, vendor: "twilio" }, null, DAY + 1);
    expect(await budgets.get(a.id)).toEqual(a);
    expect(a).toMatchObject({ dailyCapMicros: 12_500_000, vendor: null, deletedAt: null });
    const [created] = await trail(a.id);
    expect(created).toMatchObject({ actor, ts: DAY, data: { action: "created", budget_id: a.id, name: "billing", label_prefix: "billing/", vendor: null, cap_usd: 12.5 } });
    expect((await trail(b.id))[0]!.actor).toBeNull();
    await budgets.remove(b.id, actor, DAY + 2);
    const live = (await budgets.list()).map((r) => r.id);
    expect(live).toContain(a.id);
    expect(live).not.toContain(b.id);
    const all = (await budgets.list({ includeDeleted: true })).map((r) => r.id);
    expect(all.indexOf(b.id)).toBeLessThan(all.indexOf(a.id));
  });

  test("bad input names each field and stores nothing", async () => {
    const before = (await budgets.list({ includeDeleted: true })).length;
    const err = await budgets.create({ name: "", label_prefix: "", daily_usd_cap: -1 }, actor).catch((e) => e);
    expect(err.code).toBe("invalid_request");
    expect(JSON.stringify(err.details)).toContain("label_prefix");
    expect((await budgets.list({ includeDeleted: true })).length).toBe(before);
  });

  test("update changes what it names and records each change from → to", async () => {
    const b = await budgets.create({ name: "mail", label_prefix: "mail/", daily_usd_cap: 5 }, actor, DAY);
    const after = await budgets.update(b.id, { daily_usd_cap: 7.25, vendor: "resend" }, actor, DAY + 10);
    expect(after).toMatchObject({ id: b.id, name: "mail", dailyCapMicros: 7_250_000, vendor: "resend", updatedAt: DAY + 10, createdAt: DAY });
    expect(await budgets.get(b.id)).toEqual(after);
    const changed = (await trail(b.id))[1]!;
    expect(changed.data).toMatchObject({ action: "changed", cap_usd: 7.25, changes: { daily_usd_cap: { from: 5, to: 7.25 }, vendor: { from: null, to: "resend" } } });
    expect(Object.keys(changed.data.changes as object).sort()).toEqual(["daily_usd_cap", "vendor"]);
  });

  test("concurrent updates are each applied to the one before: the trail's from → to chain is unbroken", async () => {
    const b = await budgets.create({ name: "race", label_prefix: "race/", daily_usd_cap: 1 }, actor, DAY);
    // One `now` for all: event ids then follow the order the events were minted in, i.e. under the row lock.
    await Promise.all(Array.from({ length: 12 }, (_, i) => budgets.update(b.id, { daily_usd_cap: i + 2 }, actor, DAY + 1)));
    const changes = (await trail(b.id)).slice(1).map((e) => (e.data.changes as any).daily_usd_cap as { from: number; to: number });
    expect(changes).toHaveLength(12);
    for (let i = 1; i < changes.length; i++) expect(changes[i]!.from).toBe(changes[i - 1]!.to);
    expect(changes[0]!.from).toBe(1);
    expect((await budgets.get(b.id)).dailyCapMicros).toBe(changes.at(-1)!.to * 1_000_000);
  });

  test("remove is idempotent (one event); a deleted budget cannot be changed (409); unknown ids are 404", async () => {
    const b = await budgets.create({ name: "gone", label_prefix: "gone/", daily_usd_cap: 3 }, actor, DAY);
    const first = await budgets.remove(b.id, actor, DAY + 5);
    const again = await budgets.remove(b.id, actor, DAY + 9);
    expect(first.deletedAt).toBe(DAY + 5);
    expect(again).toEqual(first);
    expect((await budgets.update(b.id, { name: "back" }, actor).catch((e) => e)).code).toBe("conflict");
    expect((await budgets.get(b.id)).name).toBe("gone");
    expect((await trail(b.id)).map((e) => e.data.action)).toEqual(["created", "deleted"]);
    for (const call of [() => budgets.get("bud_nope"), () => budgets.update("bud_nope", { name: "x" }, actor), () => budgets.remove("bud_nope", actor)]) {
      expect((await call().catch((e) => e)).code).toBe("not_found");
    }
  });

  test("spend reads today's row: zeros before the first call, then spent, reserved and what remains", async () => {
    const b = await budgets.create({ name: "spend", label_prefix: "spend/", daily_usd_cap: 10 }, actor, DAY);
    expect(await budgets.spend(b, DAY)).toEqual({ spent_today_usd: 0, reserved_usd: 0, remaining_today_usd: 10 });
    const row = [b.id, "2026-11-22", 2_500_000, 1_000_000] as const;
    if (backend.kind === "sqlite") backend.db.sqlite.run("INSERT INTO budget_spend_days (budget_id, day, spent_micros, reserved_micros) VALUES (?, ?, ?, ?)", [...row]);
    else await backend.sql`INSERT INTO budget_spend_days (budget_id, day, spent_micros, reserved_micros) VALUES (${row[0]}, ${row[1]}, ${row[2]}, ${row[3]})`;
    expect(await budgets.spend(b, DAY)).toEqual({ spent_today_usd: 2.5, reserved_usd: 1, remaining_today_usd: 6.5 });
    expect(await budgets.spend(b, DAY + 86_400_000)).toEqual({ spent_today_usd: 0, reserved_usd: 0, remaining_today_usd: 10 });
  });

  test.if(kind === "postgres")("a cap change waits for an admission holding the budget row FOR SHARE, and lands after it", async () => {
    if (backend.kind !== "postgres") return;
    const b = await budgets.create({ name: "locked", label_prefix: "locked/", daily_usd_cap: 4 }, actor, DAY);
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    let locked!: () => void;
    const lockTaken = new Promise<void>((r) => (locked = r));
    // As src/ledger/pg.ts does during admission.
    const admission = backend.sql.begin(async (tx) => {
      await tx`SELECT id FROM budgets WHERE id = ${b.id} FOR SHARE`;
      locked();
      await held;
    });
    await lockTaken;
    let done = false;
    const update = budgets.update(b.id, { daily_usd_cap: 9 }, actor).then((r) => ((done = true), r));
    await Bun.sleep(150);
    expect(done).toBe(false);
    release();
    await admission;
    expect((await update).dailyCapMicros).toBe(9_000_000);
  });
});
