import { Database } from "bun:sqlite";
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { sql } from "drizzle-orm";
import { drizzle } from "drizzle-orm/bun-sqlite";
import { sqliteTable, text } from "drizzle-orm/sqlite-core";
import { labelCondition, labelMatches } from "../src/domain/label-filter.ts";
import { seedKeyBody, startKeybrake, type Running } from "./helpers.ts";

// Labels chosen to sit on the edges of a byte-order range: the prefix itself, its neighbours,
// multi-byte and astral characters, and characters that are wildcards in LIKE and GLOB.
const LABELS = [
  "airflow-billing", "airflow-billing/", "airflow-billing/a", "airflow-billing/z", "airflow-billing0", "airflow-billinh",
  "airflow-billin", "airflow", "kestra/x", "ü/1", "ü/2", "üb", "v", "😀/run", "😀", "😁", "%_/a", "%_b", "a*b/1", "",
];
const FILTERS = ["airflow-billing/*", "airflow-billing*", "airflow*", "ü/*", "😀*", "%_*", "a*b/*", "*", "airflow-billing", "a*b/1", "zzz*"];

describe("label filters: exact, or a prefix when they end in *", () => {
  const sqlite = new Database(":memory:");
  const t = sqliteTable("t", { label: text("label").notNull() });
  const orm = drizzle(sqlite);
  sqlite.run("CREATE TABLE t (label TEXT NOT NULL)");
  for (const l of LABELS) sqlite.query("INSERT INTO t VALUES (?)").run(l);

  test.each(FILTERS)("%s selects in SQL exactly the labels it matches in memory", (filter) => {
    const rows = orm.select().from(t).where(labelCondition(t.label, filter) ?? sql`1`).all().map((r) => r.label).sort();
    const expected = LABELS.filter((l) => labelMatches(filter, l)).sort();
    expect(rows).toEqual(expected);
    if (filter !== "zzz*") expect(expected.length).toBeGreaterThan(0); // each filter but the last selects something
  });
});

describe("label prefix filters on the management API", () => {
  let kb: Running;
  beforeAll(async () => (kb = await startKeybrake()));
  afterAll(() => kb.stop());

  test("/vault/keys, /vault/audit and /vault/spend take label=prefix/*", async () => {
    const run = `airflow-billing-${Date.now()}`;
    const a = await kb.issueKey(seedKeyBody({ agent_run_label: `${run}/scheduled__1` }));
    const b = await kb.issueKey(seedKeyBody({ agent_run_label: `${run}/scheduled__2` }));
    await kb.issueKey(seedKeyBody({ agent_run_label: `${run}-other/x` }));
    const keys = await kb.api("GET", `/vault/keys?label=${encodeURIComponent(run + "/*")}`);
    expect(keys.status).toBe(200);
    expect(keys.json.data.map((k: any) => k.key_id).sort()).toEqual([a.key_id, b.key_id].sort());
    const exact = await kb.api("GET", `/vault/keys?label=${encodeURIComponent(run + "/scheduled__1")}`);
    expect(exact.json.data.map((k: any) => k.key_id)).toEqual([a.key_id]);

    // One refused call per key leaves an audit row under each label.
    for (const k of [a, b]) {
      await fetch(`${kb.url}/stripe/v1/customers`, { headers: { authorization: `Bearer ${k.vault_key}` } });
    }
    const audit = await kb.api("GET", `/vault/audit?label=${encodeURIComponent(run + "/*")}`);
    expect(audit.status).toBe(200);
    expect(audit.json.data.map((r: any) => r.key_id).sort()).toEqual([a.key_id, b.key_id].sort());
    const spend = await kb.api("GET", `/vault/spend?label=${encodeURIComponent(run + "/*")}`);
    expect(spend.json.by_key.map((r: any) => r.key_id).sort()).toEqual([a.key_id, b.key_id].sort());
  });
});

// The audit queries' use of the label, key and outcome indexes is checked per backend in test/store-audit.test.ts.
