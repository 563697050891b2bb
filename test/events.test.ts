import type { EventLog } from "../src/domain/events.ts";
import { afterAll, beforeAll, expect, test } from "bun:test";
import { startKeybrake, type Running } from "./helpers.ts";

let kb: Running;
beforeAll(async () => (kb = await startKeybrake({ KEYBRAKE_LOG: "silent" })));
afterAll(() => kb.stop());

test("the event log commits with its transaction, pages newest first and feeds its sinks", async () => {
  const { db } = kb.services;
  const events = kb.services.events as EventLog;
  const seen: string[] = [];
  events.addSink((e) => seen.push(e.id));
  const actor = { tokenId: "tok_a", name: "airflow" };
  const first = db.sqlite.transaction(() => events.record({ type: "key.issued", actor, target: "key_1", data: { key_id: "key_1" } }, 1_000))();
  expect(() =>
    db.sqlite.transaction(() => {
      events.record({ type: "key.revoked", actor, target: "key_1", data: {} }, 2_000);
      throw new Error("the change failed");
    })(),
  ).toThrow("the change failed");
  const third = events.record({ type: "cap.hit", actor: null, target: "key_1", data: { cap_usd: 5 } }, 3_000);
  const page1 = await events.list({ limit: 1 });
  expect(page1.rows.map((e) => e.id)).toEqual([third.id]);
  const page2 = await events.list({ limit: 1, cursor: page1.nextCursor! });
  expect(page2.rows.map((e) => e.id)).toEqual([first.id]);
  expect(page2.nextCursor).toBeNull(); // the rolled-back event was never stored
  expect((await events.list({ limit: 10, type: "cap.hit" })).rows[0]).toMatchObject({ actor: null, data: { cap_usd: 5 } });
  expect((await events.list({ limit: 10, since: 2_000 })).rows.map((e) => e.id)).toEqual([third.id]);
  expect(seen).toContain(first.id);
});
