/**
 * Vault keys and runs on both backends: KeyService and RunsView over each backend's KeyStore and
 * RunStore (src/store/{sqlite,pg}/keys.ts, runs.ts). One table of behaviour, run over BACKENDS;
 * the last row races two replicas on PostgreSQL.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { SQL } from "bun";
import { rmSync } from "node:fs";
import * as sqliteSchema from "../src/db/schema.ts";
import { SecretBox } from "../src/domain/crypto.ts";
import type { StoredEvent } from "../src/domain/events.ts";
import { KeyService } from "../src/domain/keys.ts";
import { RunsView } from "../src/domain/runs.ts";
import { utcDay } from "../src/domain/time.ts";
import type { Principal } from "../src/domain/tokens.ts";
import { createLogger } from "../src/log.ts";
import { closeBackend, openBackend, pgSchema } from "../src/store/backend.ts";
import { openStores, type Stores } from "../src/store/index.ts";
import { BACKENDS, openTestBackend } from "./backends.ts";
import { seedKeyBody, tempDir } from "./helpers.ts";
import { freshDatabase } from "./pg.ts";

const MAX_TTL = 30 * 86_400_000;
const T0 = Date.UTC(2026, 10, 22, 12);
const MIN = 60_000;
const deps = () => ({ logger: createLogger("silent"), box: new SecretBox("store-keys-test") });

const admin: Principal = { tokenId: "tok_admin", name: "ops", role: "admin", policy: null };
const issuerA: Principal = { tokenId: "tok_a", name: "airflow", role: "issuer", policy: { max_daily_usd_cap: 100, label_prefix: "a/", max_expires_in: "1d", stripe_accounts: ["acct_1"] } };
const issuerB: Principal = { tokenId: "tok_b", name: "kestra", role: "issuer", policy: { max_daily_usd_cap: 100 } };

/** The ApiError code a call fails with. */
const codeOf = (p: Promise<unknown>) => p.then(() => "ok", (e) => (e as { code?: string }).code ?? String(e));

describe.each(BACKENDS)("vault keys and runs on %s", (kind) => {
  let backend: Awaited<ReturnType<typeof openTestBackend>>;
  let stores: Stores;
  let keys: KeyService;
  let runs: RunsView;
  beforeAll(async () => {
    backend = await openTestBackend(kind, "keys");
    stores = openStores(backend, deps());
    keys = new KeyService(stores.keys, MAX_TTL);
    runs = new RunsView(stores.runs);
  });
  afterAll(() => backend.close());

  const issue = async (over: Record<string, unknown>, by = admin, now = T0) => (await keys.issue(seedKeyBody({ daily_usd_cap: 50, ...over }), by, now)).row;
  const eventsOf = async (type: StoredEvent["type"], target: string) => (await stores.events.list({ type, limit: 500 })).rows.filter((e) => e.target === target);
  const labelsOf = async (f: Parameters<KeyService["list"]>[0], now = T0, scope?: Principal) => (await keys.list(f, now, scope)).rows.map((r) => r.agentRunLabel);

  /** Spend and audit rows as the ledger writes them. */
  async function spent(keyId: string, day: string, spentMicros: number, reservedMicros: number) {
    const row = { keyId, day, spentMicros, reservedMicros };
    if (backend.kind === "sqlite") backend.db.orm.insert(sqliteSchema.keySpendDays).values(row).run();
    else await backend.orm.insert(pgSchema.keySpendDays).values(row);
  }
  let auditId = 0;
  async function called(keyId: string, label: string, vendor: string, outcome: string, ts: number) {
    const row = { id: ++auditId, ts, keyId, agentRunLabel: label, vendor, method: "POST", path: "/v1/charges", outcome, estimatedMicros: 0, ledgerState: "settled" };
    if (backend.kind === "sqlite") backend.db.orm.insert(sqliteSchema.auditLog).values(row).run();
    else await backend.orm.insert(pgSchema.auditLog).values(row);
  }

  test("issue stores the key with its key.issued event; get is scoped to the issuer (another's key is 404)", async () => {
    const row = await issue({ agent_run_label: "a/issue", daily_usd_cap: 12.5, total_usd_cap: 40, metadata: { dag: "billing" }, stripe_accounts: ["acct_1"] }, issuerA);
    expect(await keys.get(row.id)).toEqual(row);
    expect(await keys.get(row.id, issuerA)).toEqual(row);
    expect(await keys.get(row.id, admin)).toEqual(row);
    expect(await codeOf(keys.get(row.id, issuerB))).toBe("not_found");
    expect(await codeOf(keys.get("key_nope"))).toBe("not_found");
    const [event] = await eventsOf("key.issued", row.id);
    expect(event).toMatchObject({ actor: { tokenId: "tok_a", name: "airflow" }, data: { key_id: row.id, agent_run_label: "a/issue", vendor: "stripe", cap_usd: 12.5, total_cap_usd: 40 } });
    expect(await codeOf(keys.issue(seedKeyBody({ agent_run_label: "b/outside" }), issuerA, T0))).toBe("policy_violation");
    expect(await labelsOf({ label: "b/outside", limit: 10 })).toEqual([]);
  });

  test("update changes caps and expiry within the issuer's bounds, one key.updated event each; revoked is 409, unknown or another's 404", async () => {
    const row = await issue({ agent_run_label: "a/update", daily_usd_cap: 10 }, issuerA);
    const after = await keys.update(row.id, { daily_usd_cap: 20, total_usd_cap: 50, expires_in: "2h" }, issuerA, T0 + MIN);
    expect(after).toMatchObject({ dailyCapMicros: 20_000_000, totalCapMicros: 50_000_000, expiresAt: T0 + MIN + 2 * 3_600_000 });
    expect(await keys.get(row.id)).toEqual(after);
    expect((await eventsOf("key.updated", row.id)).map((e) => e.data.changes)).toEqual([
      { daily_usd_cap: { from: 10, to: 20 }, total_usd_cap: { from: null, to: 50 }, expires_at: { from: new Date(row.expiresAt).toISOString(), to: new Date(after.expiresAt).toISOString() } },
    ]);
    expect(await codeOf(keys.update(row.id, { daily_usd_cap: 101 }, issuerA, T0))).toBe("policy_violation");
    expect(await codeOf(keys.update(row.id, { expires_in: "2d" }, issuerA, T0))).toBe("policy_violation");
    expect(await codeOf(keys.update(row.id, { daily_usd_cap: 1 }, issuerB, T0))).toBe("not_found");
    expect(await codeOf(keys.update("key_nope", { daily_usd_cap: 1 }, admin, T0))).toBe("not_found");
    expect(await codeOf(keys.update(row.id, {}, admin, T0))).toBe("invalid_request");
    expect(await keys.update(row.id, { total_usd_cap: null }, admin, T0)).toMatchObject({ totalCapMicros: null, dailyCapMicros: 20_000_000 });
    await keys.revoke(row.id, admin, T0 + 2 * MIN);
    expect(await codeOf(keys.update(row.id, { daily_usd_cap: 1 }, admin, T0))).toBe("conflict");
    expect(await eventsOf("key.updated", row.id)).toHaveLength(2);
  });

  test("updateRun changes every live key of the run in one transaction, or none when one is outside the bounds", async () => {
    const live = [await issue({ agent_run_label: "a/run-up", daily_usd_cap: 5 }, issuerA), await issue({ agent_run_label: "a/run-up", daily_usd_cap: 50 }, issuerA)];
    const revoked = await issue({ agent_run_label: "a/run-up" }, issuerA);
    await keys.revoke(revoked.id, admin, T0);
    const expired = await issue({ agent_run_label: "a/run-up", expires_in: "1m" }, issuerA);
    const others = await issue({ agent_run_label: "a/run-up" }, issuerB);
    expect(await codeOf(keys.updateRun("a/run-up", { daily_usd_cap: 101 }, issuerA, T0 + 2 * MIN))).toBe("policy_violation");
    expect((await keys.get(live[0]!.id)).dailyCapMicros).toBe(5_000_000);
    const changed = await keys.updateRun("a/run-up", { daily_usd_cap: 60 }, issuerA, T0 + 2 * MIN);
    expect(changed.map((r) => r.id)).toEqual([live[1]!.id, live[0]!.id]);
    for (const k of [...live, revoked, expired, others]) {
      expect((await keys.get(k.id)).dailyCapMicros).toBe(live.some((l) => l.id === k.id) ? 60_000_000 : 50_000_000);
    }
    expect(await eventsOf("key.updated", live[0]!.id)).toHaveLength(1);
  });

  test("revoke is once: a second revoke returns the same revocation and records no event", async () => {
    const row = await issue({ agent_run_label: "a/revoke" }, issuerA);
    expect(await codeOf(keys.revoke(row.id, issuerB, T0))).toBe("not_found");
    const first = await keys.revoke(row.id, issuerA, T0 + MIN);
    expect(first.revokedAt).toBe(T0 + MIN);
    const second = await keys.revoke(row.id, admin, T0 + 2 * MIN);
    expect(second).toEqual(first);
    expect(await keys.get(row.id)).toEqual(first);
    expect((await eventsOf("key.revoked", row.id)).map((e) => e.data)).toEqual([{ key_id: row.id, agent_run_label: "a/revoke", vendor: "stripe" }]);
  });

  test("revokeByLabel revokes the run's keys the caller sees and counts only those it revoked; one run.revoked event per call that revoked any", async () => {
    const mine = [await issue({ agent_run_label: "a/stop" }, issuerA), await issue({ agent_run_label: "a/stop" }, issuerA)];
    const theirs = await issue({ agent_run_label: "a/stop" }, issuerB);
    await issue({ agent_run_label: "a/stop-not-this" }, issuerA);
    await keys.revoke(mine[0]!.id, admin, T0);
    const byA = await keys.revokeByLabel("a/stop", issuerA, T0 + MIN);
    expect(byA.newlyRevoked).toBe(1);
    expect(byA.rows.map((r) => [r.id, r.revokedAt])).toEqual([[mine[1]!.id, T0 + MIN], [mine[0]!.id, T0]]);
    expect((await keys.get(theirs.id)).revokedAt).toBeNull();
    const byAdmin = await keys.revokeByLabel("a/stop", admin, T0 + 2 * MIN);
    expect([byAdmin.newlyRevoked, byAdmin.rows.length]).toEqual([1, 3]);
    expect(await keys.revokeByLabel("a/stop", admin, T0 + 3 * MIN)).toMatchObject({ newlyRevoked: 0 });
    expect(await keys.revokeByLabel("a/nobody", admin, T0)).toEqual({ rows: [], newlyRevoked: 0 });
    expect((await eventsOf("run.revoked", "a/stop")).map((e) => e.data).reverse()).toEqual([
      { agent_run_label: "a/stop", key_ids: [mine[1]!.id], revoked: 1 },
      { agent_run_label: "a/stop", key_ids: [theirs.id], revoked: 1 },
    ]);
    expect(await labelsOf({ label: "a/stop-not-this", status: "active", limit: 10 })).toEqual(["a/stop-not-this"]);
  });

  test("list filters by label (exact or prefix), vendor, status and issuer, newest first, and pages by cursor", async () => {
    const ids = [];
    for (const [label, vendor] of [["list/x/1", "stripe"], ["list/x/2", "twilio"], ["list/x/3", "stripe"], ["list/y", "resend"], ["list/x", "stripe"]] as const) {
      ids.push((await issue({ agent_run_label: label, vendor, allowed_endpoints: ["GET /v1/*"] }, label === "list/y" ? issuerB : admin)).id);
    }
    const gone = await issue({ agent_run_label: "list/x/gone", expires_in: "1m" });
    const revoked = await issue({ agent_run_label: "list/x/revoked" });
    await keys.revoke(revoked.id, admin, T0 + MIN);
    const now = T0 + 2 * MIN;
    expect(await labelsOf({ label: "list/x/*", limit: 10 }, now)).toEqual(["list/x/revoked", "list/x/gone", "list/x/3", "list/x/2", "list/x/1"]);
    expect(await labelsOf({ label: "list/x", limit: 10 }, now)).toEqual(["list/x"]);
    expect(await labelsOf({ label: "list/*", vendor: "stripe", status: "active", limit: 10 }, now)).toEqual(["list/x", "list/x/3", "list/x/1"]);
    expect(await labelsOf({ label: "list/*", status: "expired", limit: 10 }, now)).toEqual(["list/x/gone"]);
    expect(await labelsOf({ label: "list/*", status: "revoked", limit: 10 }, now)).toEqual(["list/x/revoked"]);
    expect(await labelsOf({ label: "list/x/*", status: "active", recentGraceMs: 5 * MIN, limit: 10 }, now)).toEqual(["list/x/revoked", "list/x/3", "list/x/2", "list/x/1"]);
    expect(await labelsOf({ label: "list/x/*", status: "active", recentGraceMs: MIN / 2, limit: 10 }, now)).toEqual(["list/x/3", "list/x/2", "list/x/1"]);
    expect(await labelsOf({ label: "list/*", limit: 10 }, now, issuerB)).toEqual(["list/y"]);
    const seen: string[] = [];
    let cursor: string | undefined;
    do {
      const page = await keys.list({ label: "list/*", limit: 3, cursor }, now);
      expect(page.rows.length).toBeLessThanOrEqual(3);
      seen.push(...page.rows.map((r) => r.id));
      cursor = page.nextCursor ?? undefined;
    } while (cursor);
    expect(seen).toEqual([revoked.id, gone.id, ...ids].sort().reverse());
    expect(await keys.countByStatus({ label: "list/*" }, now)).toEqual({ active: 5, revoked: 1, expired: 1 });
    expect(await keys.countByStatus({ label: "list/x/*", vendor: "twilio" }, now)).toEqual({ active: 1, revoked: 0, expired: 0 });
    expect(await keys.countByStatus({ label: "nothing/*" }, now)).toEqual({ active: 0, revoked: 0, expired: 0 });
  });

  test("spend reads today's key_spend_days row and the lifetime total", async () => {
    const row = await issue({ agent_run_label: "spend/1", daily_usd_cap: 10 });
    expect(await keys.spend(row, T0)).toEqual({ spent_today_usd: 0, reserved_usd: 0, remaining_today_usd: 10, spent_total_usd: 0 });
    await spent(row.id, utcDay(T0), 2_500_000, 1_000_000);
    await spent(row.id, utcDay(T0 - 86_400_000), 7_000_000, 0);
    expect(await keys.spend(row, T0)).toEqual({ spent_today_usd: 2.5, reserved_usd: 1, remaining_today_usd: 6.5, spent_total_usd: 0 });
    expect(await keys.spend(row, T0 + 86_400_000)).toMatchObject({ spent_today_usd: 0, remaining_today_usd: 10 });
  });

  test("runs group keys by label with their status, caps, today's spend and calls, newest run first, paged by cursor", async () => {
    const a1 = await issue({ agent_run_label: "runs/a", daily_usd_cap: 10, total_usd_cap: 20 });
    const b1 = await issue({ agent_run_label: "runs/b", daily_usd_cap: 1, vendor: "twilio", allowed_endpoints: ["GET /x"] });
    const c1 = await issue({ agent_run_label: "runs/c", daily_usd_cap: 3, expires_in: "1m" });
    const a2 = await issue({ agent_run_label: "runs/a", daily_usd_cap: 5, total_usd_cap: 1, vendor: "resend", allowed_endpoints: ["POST /emails"] });
    await keys.revokeByLabel("runs/b", admin, T0);
    await spent(a1.id, utcDay(T0), 1_000_000, 250_000);
    await spent(a2.id, utcDay(T0), 500_000, 0);
    await spent(a2.id, utcDay(T0 - 86_400_000), 9_000_000, 0);
    await called(a1.id, "runs/a", "stripe", "forwarded", T0 + 1);
    await called(a1.id, "runs/a", "stripe", "cap_hit", T0 + 2);
    await called(a2.id, "runs/a", "resend", "endpoint_denied", T0 + 3);
    await called(b1.id, "runs/b", "twilio", "upstream_error", T0 + 4);
    const now = T0 + 2 * MIN;

    const first = await runs.listRuns({ label: "runs/*", limit: 2 }, now);
    expect(first.runs).toEqual([
      {
        agent_run_label: "runs/a", keys: 2, active_keys: 2, status: "active", newest_key_id: a2.id, vendors: ["resend", "stripe"],
        spent_today_usd: 1.5, reserved_usd: 0.25, daily_cap_usd: 15, spent_total_usd: 0, total_cap_usd: 21,
        calls: 3, cap_hits: 1, refused: 2, last_call_at: new Date(T0 + 3).toISOString(),
      },
      {
        agent_run_label: "runs/c", keys: 1, active_keys: 0, status: "expired", newest_key_id: c1.id, vendors: ["stripe"],
        spent_today_usd: 0, reserved_usd: 0, daily_cap_usd: 3, spent_total_usd: 0, total_cap_usd: null,
        calls: 0, cap_hits: 0, refused: 0, last_call_at: null,
      },
    ]);
    expect(first.nextCursor).toBe(c1.id);
    const second = await runs.listRuns({ label: "runs/*", limit: 2, cursor: first.nextCursor! }, now);
    expect(second.runs.map((r) => [r.agent_run_label, r.status, r.calls, r.refused])).toEqual([["runs/b", "revoked", 1, 0]]);
    expect(second.nextCursor).toBeNull();
    // A vendor filter narrows the keys, their spend and their calls.
    expect((await runs.listRuns({ label: "runs/a", vendor: "stripe", limit: 5 }, now)).runs).toMatchObject([{ keys: 1, vendors: ["stripe"], spent_today_usd: 1, daily_cap_usd: 10, calls: 2, total_cap_usd: 20 }]);
    expect(await runs.listRuns({ label: "runs/none", limit: 5 }, now)).toEqual({ runs: [], nextCursor: null });
    expect(await runs.suggestLabels("runs/")).toEqual(["runs/a", "runs/c", "runs/b"]);
    expect(await runs.suggestLabels("runs/*", 1)).toEqual(["runs/a"]);
  });

  test("a label prefix filter selects exactly the labels that start with it, also past ASCII and LIKE wildcards", () => expectExactPrefixes(keys, runs));
});

/** Issues keys on the edges of each prefix's byte range; every list, run list and count under a prefix filter holds exactly the labels starting with it. */
async function expectExactPrefixes(keys: KeyService, runs: RunsView) {
  const labels = ["edge/", "edge/a", "edge/z", "edge0", "edgd", "edge", "edge/ü", "edge/😀", "edge/%_", "edgE/x", "edge-x"];
  for (const l of labels) await keys.issue(seedKeyBody({ agent_run_label: l }), admin, T0);
  for (const filter of ["edge/*", "edge*", "edge/%*", "edge/😀*", "edge/ü*"]) {
    const prefix = filter.slice(0, -1);
    const expected = labels.filter((l) => l.startsWith(prefix)).sort();
    expect((await keys.list({ label: filter, limit: 50 }, T0)).rows.map((r) => r.agentRunLabel).sort()).toEqual(expected);
    expect((await runs.listRuns({ label: filter, limit: 50 }, T0)).runs.map((r) => r.agent_run_label).sort()).toEqual(expected);
    expect((await keys.countByStatus({ label: filter }, T0)).active).toBe(expected.length);
  }
}

describe.skipIf(!BACKENDS.includes("postgres"))("vault keys on PostgreSQL only", () => {
  test("on a database with a linguistic collation (ICU en-US), a label prefix filter is still exact", async () => {
    const url = await freshDatabase("keys-icu");
    const server = new SQL(url.replace(/\/[^/]+$/, "/postgres"));
    const name = `keys_icu_${process.pid}`;
    await server.unsafe(`CREATE DATABASE ${name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.utf8'`);
    await server.close();
    const dataDir = tempDir("keybrake-icu-");
    const backend = await openBackend({ dataDir, databaseUrl: url.replace(/\/[^/]+$/, `/${name}`) });
    try {
      const stores = openStores(backend, deps());
      await expectExactPrefixes(new KeyService(stores.keys, MAX_TTL), new RunsView(stores.runs));
    } finally {
      await closeBackend(backend);
      rmSync(dataDir, { recursive: true, force: true });
    }
  });

  test("two replicas revoking one key at the same moment record exactly one key.revoked event and return the same revocation", async () => {
    const url = await freshDatabase("keys-race");
    const dirs = [tempDir("keybrake-race-"), tempDir("keybrake-race-")];
    const backends = await Promise.all(dirs.map((dataDir) => openBackend({ dataDir, databaseUrl: url })));
    const replicas = backends.map((b) => openStores(b, deps()));
    const [one, two] = replicas.map((s) => new KeyService(s.keys, MAX_TTL));
    try {
      for (let i = 0; i < 20; i++) {
        const { row } = await one!.issue(seedKeyBody({ agent_run_label: `race/${i}` }), admin, T0);
        const [x, y] = await Promise.all([one!.revoke(row.id, admin, T0 + 1), two!.revoke(row.id, admin, T0 + 2)]);
        expect(x!.revokedAt).toBe(y!.revokedAt);
        const events = (await replicas[0]!.events.list({ type: "key.revoked", limit: 100 })).rows.filter((e) => e.target === row.id);
        expect(events).toHaveLength(1);
      }
    } finally {
      for (const b of backends) await closeBackend(b);
      for (const d of dirs) rmSync(d, { recursive: true, force: true });
    }
  });
});
