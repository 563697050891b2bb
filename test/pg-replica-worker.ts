/**
 * One "replica" of the ledger for test/pg-ledger.test.ts: its own process and connection pool on
 * the shared PostgreSQL database. Fires `count` admissions for `keyId` at once; settles each at
 * its estimate (mode "settle") or prints "held" and waits to be killed (mode "hold").
 * argv: url keyId count micros mode
 */
import { openPostgres } from "../src/db/pg.ts";
import { PgLedger } from "../src/ledger/pg.ts";

const [url, keyId, count, micros, mode] = process.argv.slice(2) as [string, string, string, string, "settle" | "hold"];
const sql = openPostgres(url, { max: 10 });
const ledger = new PgLedger(sql);
const [row] = await sql`SELECT key_hash FROM vault_keys WHERE id = ${keyId}`;
const key = (await ledger.findKeyByHash(row.key_hash))!;
const call = { vendor: key.vendor, method: "POST", path: "/v1/charges", idempotencyKey: null };
const outcomes = await Promise.all(
  Array.from({ length: Number(count) }, async () => {
    const a = await ledger.admit(key, call, Number(micros), Date.now(), null);
    if (a.kind !== "reserved") return a.kind === "refused" ? a.outcome : a.kind;
    if (mode === "settle") {
      await ledger.settle(a.reservation, { vendorStatus: 200, actualMicros: Number(micros), vendorRequestId: null, vendorObjectId: null, latencyMs: 1 }, null);
    }
    return "reserved";
  }),
);
const tally: Record<string, number> = {};
for (const o of outcomes) tally[o] = (tally[o] ?? 0) + 1;
console.log(JSON.stringify(tally));
if (mode === "hold") {
  console.log("held");
  await new Promise(() => {}); // killed with SIGKILL mid-call: the reservations are committed, never settled
}
await sql.close();
