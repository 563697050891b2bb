/**
 * One schema per dialect (SPEC §8): the SQLite migrations (migrations/*.sql, applied in order)
 * and the PostgreSQL ones (migrations/pg/*.sql) must describe the same tables, the same columns,
 * the same nullability and compatible types — checked on real databases after migrating both.
 * Also: every file in migrations/pg/ is embedded.
 */
import { Database } from "bun:sqlite";
import { describe, expect, test } from "bun:test";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { is } from "drizzle-orm";
import { getTableConfig as pgTableConfig, PgTable } from "drizzle-orm/pg-core";
import { getTableConfig as sqliteTableConfig, SQLiteTable } from "drizzle-orm/sqlite-core";
import { migrate } from "../src/db/connection.ts";
import * as pgSchema from "../src/db/pg-schema.ts";
import * as sqliteSchema from "../src/db/schema.ts";
import { PG_MIGRATIONS } from "../src/db/migrations.ts";
import { migratePostgres, openPostgres } from "../src/db/pg.ts";
import { freshDatabase, postgresAvailable } from "./pg.ts";

type Shape = Record<string, Record<string, { type: string; notNull: boolean }>>;

/** SQLite affinity → the PostgreSQL types that store the same values. */
const FAMILY: Record<string, string> = { INTEGER: "int", BIGINT: "int", REAL: "real", "DOUBLE PRECISION": "real", TEXT: "text", BLOB: "bytes", BYTEA: "bytes" };
const family = (t: string) => FAMILY[t.toUpperCase()] ?? `?${t}`;

function sqliteShape(): Shape {
  const db = new Database(":memory:");
  migrate(db);
  const shape: Shape = {};
  const tables = db.query(`SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name <> '_migrations' ORDER BY name`).all() as { name: string }[];
  for (const { name } of tables) {
    shape[name] = {};
    for (const c of db.query(`SELECT name, type, "notnull" AS nn, pk FROM pragma_table_info(?)`).all(name) as { name: string; type: string; nn: number; pk: number }[]) {
      // SQLite lets a non-INTEGER primary key column hold NULL unless declared NOT NULL; PostgreSQL never does: compare as NOT NULL.
      shape[name]![c.name] = { type: family(c.type), notNull: c.nn === 1 || c.pk > 0 };
    }
  }
  db.close();
  return shape;
}

describe("PostgreSQL schema", () => {
  test("every file in migrations/pg/ is embedded, in order", () => {
    const onDisk = readdirSync(join(import.meta.dir, "..", "migrations", "pg")).filter((f) => f.endsWith(".sql")).sort();
    expect(PG_MIGRATIONS.map((m) => m.name)).toEqual(onDisk);
  });

  test.skipIf(!postgresAvailable())("describes the same tables, columns, types and nullability as the SQLite migrations", async () => {
    const sql = openPostgres(await freshDatabase("schema"));
    await migratePostgres(sql);
    const rows = await sql`SELECT table_name, column_name, upper(data_type) AS type, is_nullable FROM information_schema.columns
                            WHERE table_schema = 'public' AND table_name <> '_migrations' ORDER BY table_name, ordinal_position`;
    await sql.close();
    const pg: Shape = {};
    for (const r of rows as { table_name: string; column_name: string; type: string; is_nullable: string }[]) {
      (pg[r.table_name] ??= {})[r.column_name] = { type: family(r.type), notNull: r.is_nullable === "NO" };
    }
    const lite = sqliteShape();
    expect(Object.keys(pg).sort()).toEqual(Object.keys(lite).sort());
    for (const table of Object.keys(lite)) expect({ table, columns: pg[table] }).toEqual({ table, columns: lite[table]! });
  });
});

/** drizzle's two schemas (src/db/schema.ts, src/db/pg-schema.ts): what the stores query must be what the migrations made. */
describe("drizzle schemas", () => {
  const sqliteTables = () =>
    (Object.values(sqliteSchema) as unknown[]).filter((t): t is SQLiteTable => is(t, SQLiteTable)).map((t) => sqliteTableConfig(t));
  const pgTables = () =>
    (Object.values(pgSchema) as unknown[]).filter((t): t is PgTable => is(t, PgTable)).map((t) => pgTableConfig(t));
  const columnsOf = (configs: { name: string; columns: { name: string; notNull: boolean }[] }[]) =>
    Object.fromEntries(configs.map((c) => [c.name, Object.fromEntries(c.columns.map((col) => [col.name, col.notNull]))]));

  test("the PostgreSQL schema has every table of the SQLite one, with the same columns and nullability", () => {
    const lite = columnsOf(sqliteTables());
    const pg = columnsOf(pgTables());
    expect(Object.keys(lite).length).toBeGreaterThan(10);
    for (const [table, columns] of Object.entries(lite)) expect({ table, columns: pg[table] }).toEqual({ table, columns });
  });

  test("each describes its migrated database: every table and column exists there, nullability as migrated", async () => {
    const lite = sqliteShape();
    for (const [table, columns] of Object.entries(columnsOf(sqliteTables()))) {
      for (const [column, notNull] of Object.entries(columns)) expect({ table, column, notNull: lite[table]?.[column]?.notNull }).toEqual({ table, column, notNull });
    }
    if (!postgresAvailable()) return;
    const sql = openPostgres(await freshDatabase("drizzle"));
    await migratePostgres(sql);
    const rows = (await sql`SELECT table_name, column_name, is_nullable FROM information_schema.columns WHERE table_schema = 'public'`) as { table_name: string; column_name: string; is_nullable: string }[];
    await sql.close();
    const migrated = new Map(rows.map((r) => [`${r.table_name}.${r.column_name}`, r.is_nullable === "NO"]));
    for (const [table, columns] of Object.entries(columnsOf(pgTables()))) {
      for (const [column, notNull] of Object.entries(columns)) expect({ table, column, notNull: migrated.get(`${table}.${column}`) }).toEqual({ table, column, notNull });
    }
  });
});
