/**
 * The PostgreSQL driver (Bun.SQL, src/db/pg.ts) must never hand one query's rows to another.
 * Bun before the fixes of oven-sh/bun#33627 and #32772 did exactly that when simple-protocol,
 * first-use parameterised and already-prepared queries were pipelined on one connection
 * (oven-sh/bun#33665). This drives that interleaving on a single connection, prepared and not,
 * plus concurrent transactions, and checks every answer against its own query.
 */
import { describe, expect, test } from "bun:test";
import { SQL } from "bun";
import { freshDatabase, postgresAvailable } from "./pg.ts";

describe.skipIf(!postgresAvailable())("Bun.SQL result routing", () => {
  test.each([true, false])("pipelined queries on one connection (prepare: %p) each get their own rows", async (prepare) => {
    const sql = new SQL({ url: await freshDatabase("driver"), max: 1, prepare });
    const wrong: string[] = [];
    for (let i = 0; i < 200; i++) {
      const [a, b, c, d] = await Promise.all([
        sql.unsafe(`SELECT 'AAAA'::text AS v`),
        sql.unsafe(`SELECT $1::text AS v`, [`B${i}`]),
        sql.unsafe(`SELECT set_config('kb.t', $1, false) AS v`, [`C${i}`]),
        sql.unsafe(`SELECT $1::int AS w, 'D'::text AS v`, [i]),
      ]);
      const got = [a[0]?.v, b[0]?.v, c[0]?.v, d[0]?.v].join(",");
      if (got !== `AAAA,B${i},C${i},D`) wrong.push(got);
    }
    const tx = await Promise.all(Array.from({ length: 50 }, (_, i) => sql.begin(async (t) => (await t`SELECT ${`T${i}`}::text AS v`)[0].v)));
    tx.forEach((v, i) => v !== `T${i}` && wrong.push(`tx ${i}: ${v}`));
    await sql.close();
    expect(wrong).toEqual([]);
  }, 30_000);
});
