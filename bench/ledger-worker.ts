/**
 * One ledger replica for bench/ledger-backends.ts: admits and settles `calls` $1 charges on one key,
 * `concurrency` at a time, on SQLite (a data dir) or PostgreSQL (a URL), and prints what it saw.
 * argv: backend(sqlite|pg) target keyId calls concurrency
 */
import { openDatabase } from "../src/db/connection.ts";
import { openPostgres } from "../src/db/pg.ts";
import { Ledger, type LiveKey } from "../src/domain/ledger.ts";
import { PgLedger } from "../src/ledger/pg.ts";
import type { SpendLedger } from "../src/ledger/types.ts";

const [backend, target, keyId, callsArg, concArg] = process.argv.slice(2) as [string, string, string, string, string];
const USD = 1_000_000;
let ledger: SpendLedger;
let hash: string;
let close: () => Promise<void>;
if (backend === "pg") {
  const sql = openPostgres(target, { max: 16 });
  ledger = new PgLedger(sql);
  hash = (await sql`SELECT key_hash FROM vault_keys WHERE id = ${keyId}`)[0].key_hash;
  close = () => sql.close();
} else {
  const db = openDatabase(target);
  ledger = new Ledger(db.sqlite);
  hash = (db.sqlite.query("SELECT key_hash FROM vault_keys WHERE id = ?").get(keyId) as { key_hash: string }).key_hash;
  close = async () => db.sqlite.close();
}
const key = (await ledger.findKeyByHash(hash)) as LiveKey;
const call = { vendor: "stripe", method: "POST", path: "/v1/charges", idempotencyKey: null };
const tally: Record<string, number> = {};
const latencies: number[] = [];
let next = 0;
const calls = Number(callsArg);
const started = performance.now();
await Promise.all(
  Array.from({ length: Number(concArg) }, async () => {
    while (next < calls) {
      next++;
      const t0 = performance.now();
      const a = await ledger.admit(key, call, USD, Date.now(), null);
      if (a.kind === "reserved") await ledger.settle(a.reservation, { vendorStatus: 200, actualMicros: USD, vendorRequestId: null, vendorObjectId: null, latencyMs: 0 }, null);
      latencies.push(performance.now() - t0);
      const k = a.kind === "refused" ? a.outcome : a.kind;
      tally[k] = (tally[k] ?? 0) + 1;
    }
  }),
);
const ms = performance.now() - started;
await close();
console.log(JSON.stringify({ tally, ms, latencies }));
