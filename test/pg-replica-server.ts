/**
 * A proxy replica for test/pg-replicas.test.ts: the real Forwarder and proxy routes on a loopback
 * port, with the PostgreSQL ledger shared by every replica. Only the vendor secret lives locally
 * (given by the environment, as every replica of a deployment gets it). Prints its URL when ready.
 * argv: pgUrl vendorUrl stripeSecret
 */
import { Elysia } from "elysia";
import { openDatabase } from "../src/db/connection.ts";
import { openPostgres } from "../src/db/pg.ts";
import { loadMasterKey, SecretBox } from "../src/domain/crypto.ts";
import { EventLog } from "../src/domain/events.ts";
import { VendorSecretStore } from "../src/domain/secrets.ts";
import { proxyRoutes } from "../src/http/proxy.ts";
import { PgLedger } from "../src/ledger/pg.ts";
import { createLogger } from "../src/log.ts";
import { Metrics } from "../src/metrics.ts";
import { Forwarder } from "../src/proxy/forward.ts";
import { MAX_PROXY_BODY_BYTES } from "../src/services.ts";
import { SqliteVendorSecretStore } from "../src/store/sqlite/secrets.ts";
import { loadPricing } from "../src/vendors/pricing.ts";
import { tempDir } from "./helpers.ts";

const [pgUrl, vendorUrl, stripeSecret] = process.argv.slice(2) as [string, string, string];
const logger = createLogger("silent");
const dir = tempDir("keybrake-replica-");
const scratch = openDatabase(dir);
const secrets = new VendorSecretStore(new SqliteVendorSecretStore(scratch, new EventLog(scratch.sqlite, logger)), new SecretBox(loadMasterKey(dir, undefined)));
await secrets.adoptEnvironment({ stripe: { secret_key: stripeSecret } });
const forwarder = new Forwarder({
  ledger: new PgLedger(openPostgres(pgUrl, { max: 10 })),
  secrets,
  pricing: loadPricing(),
  metrics: new Metrics(),
  logger,
  baseUrls: { stripe: vendorUrl, twilio: vendorUrl, resend: vendorUrl },
  upstreamTimeoutMs: 30_000,
  maxBodyBytes: MAX_PROXY_BODY_BYTES,
});
// Says which replica answered (test/pg-deploy.test.ts checks the load balancer spreads calls); the proxy itself is untouched.
const tagged = { handle: async (...args: Parameters<Forwarder["handle"]>) => {
  const res = await forwarder.handle(...args);
  const headers = new Headers(res.headers);
  headers.set("x-test-replica", String(process.pid));
  return new Response(res.body, { status: res.status, headers });
} } as unknown as Forwarder;
const app = new Elysia().use(proxyRoutes(tagged)).listen({ port: 0, hostname: "127.0.0.1" });
console.log(`http://127.0.0.1:${app.server!.port}`);
