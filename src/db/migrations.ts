/**
 * Every SQL file in migrations/, embedded in the binary as text. The name is the
 * version; they run in this order. test/migrations.test.ts fails if a file in
 * migrations/ is missing here.
 */
import m0001 from "../../migrations/0001_init.sql" with { type: "text" };

export const MIGRATIONS: readonly { name: string; sql: string }[] = [{ name: "0001_init.sql", sql: m0001 }];
