/**
 * Management tokens on both backends: what TokenStore (src/domain/tokens.ts) promises, over the
 * TokenStorage of each backend. On PostgreSQL concurrent calls run on separate pooled
 * connections, as replicas would.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { SecretBox } from "../src/domain/crypto.ts";
import type { EventType } from "../src/domain/events.ts";
import { MANAGEMENT_TOKEN_PREFIX, TokenStore } from "../src/domain/tokens.ts";
import { createLogger } from "../src/log.ts";
import { openStores, type Stores } from "../src/store/index.ts";
import { BACKENDS, openTestBackend } from "./backends.ts";

const ADMIN = { tokenId: "tok_admin", name: "ops" };
const POLICY = { max_daily_usd_cap: 10, vendors: ["stripe"] };

describe.each(BACKENDS)("management tokens on %s", (kind) => {
  let backend: Awaited<ReturnType<typeof openTestBackend>>;
  let stores: Stores;
  let tokens: TokenStore;
  /** Events of one type, oldest first. */
  const events = async (type: EventType) => (await stores.events.list({ type, limit: 100 })).rows.reverse();

  beforeAll(async () => {
    backend = await openTestBackend(kind, "tokens");
    stores = openStores(backend, { logger: createLogger("silent"), box: new SecretBox("k".repeat(40)) });
    tokens = new TokenStore(stores.tokens);
  });
  afterAll(() => backend.close());

  test("first start mints exactly one token, however many replicas start together; never with a bootstrap token", async () => {
    expect(await new TokenStore(stores.tokens, "kbt_bootstrap_0123456789abcdef").ensureFirstToken()).toBeNull();
    const minted = await Promise.all(Array.from({ length: 6 }, () => new TokenStore(stores.tokens).ensureFirstToken()));
    const first = minted.filter((t) => t !== null);
    expect(first).toHaveLength(1);
    expect(first[0]).toStartWith(MANAGEMENT_TOKEN_PREFIX);
    expect(await tokens.count()).toBe(1);
    expect((await tokens.authenticate(first[0]))?.name).toBe("first-start");
    expect(await tokens.ensureFirstToken()).toBeNull();
    expect((await events("token.created")).map((e) => e.actor)).toEqual([null]);
  });

  test("a created token authenticates with its role and policy; it is listed newest first, never with its secret", async () => {
    const viewer = await tokens.createFromBody({ name: "grafana", role: "viewer" }, ADMIN, 1_000);
    const issuer = await tokens.createFromBody({ name: "airflow", role: "issuer", policy: POLICY }, ADMIN, 2_000);
    expect(await tokens.authenticate(issuer.token)).toEqual({ tokenId: issuer.info.id, name: "airflow", role: "issuer", policy: POLICY });
    expect(await tokens.authenticate(viewer.token)).toMatchObject({ role: "viewer", policy: null });
    expect(await tokens.verify(viewer.token + "x")).toBe(false);
    expect(await tokens.get(issuer.info.id)).toEqual(issuer.info);
    const listed = await tokens.list();
    expect(listed.slice(0, 2)).toEqual([issuer.info, viewer.info]);
    expect(JSON.stringify(listed)).not.toContain(issuer.token);
    expect((await events("token.created")).at(-1)).toMatchObject({ actor: ADMIN, target: issuer.info.id, data: { token_id: issuer.info.id, name: "airflow", role: "issuer" } });
  });

  test("revoking refuses the token at once, ends its admin sessions with one event, and a second revoke changes nothing", async () => {
    const { info, token } = await tokens.createFromBody({ name: "laptop" }, ADMIN, 3_000);
    for (const idHash of ["s1", "s2"]) await stores.sessions.insert({ idHash, csrfToken: "c", createdAt: 3_000, expiresAt: 9e12, tokenId: info.id });
    await stores.sessions.insert({ idHash: "other", csrfToken: "c", createdAt: 3_000, expiresAt: 9e12, tokenId: "tok_someone_else" });
    const before = await tokens.count();
    const elsewhere = new TokenStore(stores.tokens);
    expect((await elsewhere.authenticate(token))?.tokenId).toBe(info.id);
    // Two replicas revoking together: one revocation, one event.
    const [a, b] = await Promise.all([tokens.revoke(info.id, ADMIN, 4_000), new TokenStore(stores.tokens).revoke(info.id, ADMIN, 4_000)]);
    expect(a).toEqual({ ...info, revokedAt: 4_000 });
    expect(b).toEqual(a);
    expect(await tokens.revoke(info.id, ADMIN, 5_000)).toEqual(a);
    // The next request on any replica is refused: nothing caches a token past its revoke.
    expect(await elsewhere.authenticate(token)).toBeNull();
    expect(await elsewhere.principalById(info.id)).toBeNull();
    expect(await tokens.count()).toBe(before - 1);
    expect(await stores.sessions.findLive("s1", 4_500)).toBeNull();
    expect(await stores.sessions.findLive("s2", 4_500)).toBeNull();
    expect(await stores.sessions.findLive("other", 4_500)).not.toBeNull();
    const revoked = (await events("token.revoked")).filter((e) => e.target === info.id);
    expect(revoked).toEqual([expect.objectContaining({ actor: ADMIN, data: { token_id: info.id, name: "laptop", role: "admin", sessions_ended: 2 } })]);
  });

  test("an unknown id is not found for get and revoke, and stands for no principal", async () => {
    for (const call of [() => tokens.get("tok_nope"), () => tokens.revoke("tok_nope", ADMIN)]) {
      await expect(call()).rejects.toMatchObject({ code: "not_found" });
    }
    expect(await tokens.principalById("tok_nope")).toBeNull();
    expect(await tokens.authenticate("")).toBeNull();
  });

  test("the bootstrap token is an admin by session reference, until KEYBRAKE_ADMIN_TOKEN changes", async () => {
    const bootstrap = "kbt_bootstrap_0123456789abcdef";
    const withBootstrap = new TokenStore(stores.tokens, bootstrap);
    const p = (await withBootstrap.authenticate(bootstrap))!;
    expect(p.tokenId).toBe("bootstrap");
    const ref = withBootstrap.sessionRef(p);
    expect(await withBootstrap.principalById(ref)).toEqual(p);
    expect(await new TokenStore(stores.tokens, bootstrap + "2").principalById(ref)).toBeNull();
    const stored = await tokens.createFromBody({ name: "ci" }, ADMIN);
    expect(await withBootstrap.principalById(withBootstrap.sessionRef((await withBootstrap.authenticate(stored.token))!))).toMatchObject({ tokenId: stored.info.id });
  });
});
