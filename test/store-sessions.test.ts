/**
 * The session store on both backends: what AdminSessions relies on (src/domain/admin-sessions.ts).
 * The pattern for every store test: one table of behaviour, run over BACKENDS.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { SessionStore } from "../src/domain/admin-sessions.ts";
import { PgSessionStore } from "../src/store/pg/sessions.ts";
import { SqliteSessionStore } from "../src/store/sqlite/sessions.ts";
import { BACKENDS, openTestBackend } from "./backends.ts";

describe.each(BACKENDS)("session store on %s", (kind) => {
  let backend: Awaited<ReturnType<typeof openTestBackend>>;
  let store: SessionStore;
  beforeAll(async () => {
    backend = await openTestBackend(kind, "sessions");
    store = backend.kind === "sqlite" ? new SqliteSessionStore(backend.db) : new PgSessionStore(backend.orm);
  });
  afterAll(() => backend.close());

  test("a session is live until it expires or ends, and ending it twice changes nothing", async () => {
    await store.insert({ idHash: "h1", csrfToken: "c1", createdAt: 1_000, expiresAt: 5_000, tokenId: "tok_1" });
    expect(await store.findLive("h1", 4_999)).toEqual({ csrfToken: "c1", expiresAt: 5_000, tokenId: "tok_1" });
    expect(await store.findLive("h1", 5_000)).toBeNull();
    expect(await store.findLive("nope", 1_000)).toBeNull();
    await store.insert({ idHash: "h2", csrfToken: "c2", createdAt: 1_000, expiresAt: 9_000, tokenId: null });
    await store.end("h2", 2_000);
    await store.end("h2", 3_000);
    expect(await store.findLive("h2", 2_500)).toBeNull();
    expect(await store.findLive("h1", 2_500)).not.toBeNull();
  });
});
