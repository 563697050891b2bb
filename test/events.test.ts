/** The operator trail on both backends: EventLog (SQLite) and PgEventLog (PostgreSQL), one table run over BACKENDS. */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { BACKENDS } from "./backends.ts";
import { openShared, type Replica } from "./store-replicas.ts";

describe.each(BACKENDS)("the event trail on %s", (kind) => {
  let shared: Awaited<ReturnType<typeof openShared>>;
  let a: Replica;
  beforeAll(async () => {
    shared = await openShared(kind, "events");
    a = shared.a;
  }, 60_000); // the first PostgreSQL test of a run starts the cluster
  afterAll(() => shared.close());

  test("the event log commits with its transaction, pages newest first and feeds its sinks", async () => {
    const events = a.stores.events;
    const seen: string[] = [];
    a.addSink((e) => seen.push(e.id));
    const actor = { tokenId: "tok_a", name: "airflow" };
    const first = await a.record({ type: "key.issued", actor, target: "key_1", data: { key_id: "key_1" } }, { now: 1_000 });
    await expect(a.record({ type: "key.revoked", actor, target: "key_1", data: {} }, { now: 2_000, fail: true })).rejects.toThrow("the change failed");
    // Written by the other process or replica: one trail.
    const third = await shared.b.record({ type: "cap.hit", actor: null, target: "key_1", data: { cap_usd: 5 } }, { now: 3_000 });
    const page1 = await events.list({ limit: 1 });
    expect(page1.rows.map((e) => e.id)).toEqual([third.id]);
    const page2 = await events.list({ limit: 1, cursor: page1.nextCursor! });
    expect(page2.rows.map((e) => e.id)).toEqual([first.id]);
    expect(page2.nextCursor).toBeNull(); // the rolled-back event was never stored
    expect(page2.rows[0]).toEqual({ id: first.id, ts: 1_000, type: "key.issued", actor, target: "key_1", data: { key_id: "key_1" } });
    expect((await events.list({ limit: 10, type: "cap.hit" })).rows[0]).toMatchObject({ actor: null, data: { cap_usd: 5 } });
    expect((await events.list({ limit: 10, since: 2_000 })).rows.map((e) => e.id)).toEqual([third.id]);
    expect((await events.list({ limit: 10, until: 3_000 })).rows.map((e) => e.id)).toEqual([first.id]);
    expect(seen).toContain(first.id);
  });
});
