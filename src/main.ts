#!/usr/bin/env bun
import { join } from "node:path";
import { createApp } from "./app.ts";
import { ConfigError, FLAGS, loadConfig, localUrl, parseFlags, proxyBaseUrl, type Config } from "./config.ts";
import { loadMasterKey, masterKeyFile, requireSharedMasterKey, SecretBox } from "./domain/crypto.ts";
import { MasterKeyMismatch } from "./domain/secrets.ts";
import { presentToken, TokenStore } from "./domain/tokens.ts";
import { ApiError, type FieldIssue } from "./errors.ts";
import { createLogger, type Logger } from "./log.ts";
import { createServices, MAX_PROXY_BODY_BYTES, type Services } from "./services.ts";
import { runDemo } from "./demo.ts";
import { closeBackend, openBackend } from "./store/backend.ts";
import { openStores, type Stores } from "./store/index.ts";
import { VERSION } from "./version.ts";

const HELP = `keybrake ${VERSION} — spend-cap proxy for Stripe, Twilio and Resend

Usage:
  keybrake [serve] [--flag value …]    start the server (default)
  keybrake token create --name NAME [--role admin|issuer|viewer] [--policy JSON]
                                       mint a management API token and print it once
  keybrake token list                  list management tokens (id, role, status, name; never the token)
  keybrake token revoke TOKEN_ID       revoke a token at once (and end its admin sessions)
  keybrake secrets reset --confirm     forget the stored vendor secrets (after a lost master key)
  keybrake demo                        try it: Keybrake + a local fake Stripe/Twilio/Resend, with sample runs
  keybrake healthcheck                 exit 0 if the server on KEYBRAKE_PORT answers /healthz with 200 (for container health checks)
  keybrake version                     print the version
  keybrake --help                      this text

Configuration is by environment variable (KEYBRAKE_PORT, KEYBRAKE_DATA_DIR, …; see the README).
serve takes the same settings as flags, which win over the environment (secrets only by environment):
  ${[...FLAGS.keys()].join(" ")}
`;

function fail(message: string): never {
  console.error(`keybrake: ${message}`);
  process.exit(2);
}

/** Where the state lives, for messages: never the URL (it usually carries the database password). */
const whereStored = (config: Config) => (config.databaseUrl ? "the PostgreSQL database of KEYBRAKE_DATABASE_URL" : join(config.dataDir, "keybrake.db"));

function masterKeyMessage(config: Config, e: MasterKeyMismatch): string {
  const db = whereStored(config);
  const source = config.masterKey ? "KEYBRAKE_MASTER_KEY" : `the key file ${masterKeyFile(config.dataDir)} (KEYBRAKE_MASTER_KEY is not set)`;
  const what = e.vendors.length ? `the ${e.vendors.join(", ")} secret(s) stored in ${db}` : `what ${db} was set up with (its master key check)`;
  return (
    `${source} cannot decrypt ${what}. ` +
    `Start with the master key they were stored with (KEYBRAKE_MASTER_KEY as before, or master.key from the backup of this data dir); ` +
    `if that key is lost, run "keybrake secrets reset --confirm" and set the vendor secrets again.`
  );
}

function hostCanListen(host: string): boolean {
  try {
    Bun.serve({ port: 0, hostname: host, reusePort: false, fetch: () => new Response() }).stop(true);
    return true;
  } catch {
    return false;
  }
}

function listen(app: ReturnType<typeof createApp>, config: Config): number {
  try {
    // reusePort false: with SO_REUSEPORT a second Keybrake would bind the same port and the kernel would split calls between two ledgers.
    app.listen({ port: config.port, hostname: config.host, reusePort: false, maxRequestBodySize: MAX_PROXY_BODY_BYTES + 1024 });
  } catch (e) {
    const err = e as { code?: string; message?: string };
    // Bun reports an unusable host as EADDRINUSE too: it is the port only if the host takes another one.
    if (err.code === "EADDRINUSE" && hostCanListen(config.host)) {
      fail(`port ${config.port} on ${config.host} is already in use (another Keybrake?); free it or choose another with KEYBRAKE_PORT / --port`);
    }
    fail(`cannot listen on ${config.host}:${config.port}; check KEYBRAKE_HOST / --host and KEYBRAKE_PORT / --port (${err.code ?? err.message})`);
  }
  return app.server!.port!;
}

/**
 * SIGTERM/SIGINT (SPEC §9): /healthz turns 503 at once, the listener closes, calls in flight finish
 * and settle for up to the grace period, queued ledger writes commit, the database closes, exit 0.
 * A call still running when the grace ends is cut; its reservation stays, as after a crash.
 */
function handleShutdown(app: ReturnType<typeof createApp>, services: Services, logger: Logger, graceMs: number) {
  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    services.lifecycle.draining = true;
    const server = app.server!;
    logger.info(`${signal}: shutting down; ${server.pendingRequests} call(s) in flight get up to ${graceMs / 1000}s to finish`);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const finished = await Promise.race([
      server.stop(false).then(() => true),
      new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), graceMs))),
    ]);
    clearTimeout(timer);
    if (!finished) {
      logger.info(`shutdown grace over: cutting ${server.pendingRequests} call(s); their reservations stay unsettled`);
      await server.stop(true);
    }
    // Answered calls' settlements commit after their answers (group commit): let them run.
    await services.forwarder.settled();
    // Deliveries not yet sent stay queued in the outbox for the next start.
    await services.close();
    logger.info(finished ? "stopped: every call in flight finished and settled" : "stopped");
    process.exit(0);
  };
  process.on("SIGINT", () => void shutdown("SIGINT"));
  process.on("SIGTERM", () => void shutdown("SIGTERM"));
}

async function serve(config: Config) {
  const logger = createLogger(config.log);
  let services: Services;
  try {
    services = await createServices(config, undefined, logger);
  } catch (e) {
    if (e instanceof MasterKeyMismatch) fail(masterKeyMessage(config, e));
    throw e;
  }
  let port = config.port;
  const app = createApp(services, { proxyBaseUrl: () => proxyBaseUrl(config, port) });
  port = listen(app, config);
  handleShutdown(app, services, logger, config.shutdownGraceMs);
  services.retention.start();
  const url = localUrl(config, port);
  logger.info(`keybrake ${VERSION} listening on ${url} — admin pages: ${url}/admin (data: ${config.dataDir})`);
  // Minted only now that the port is ours: a start that fails to listen leaves no token nobody saw.
  const firstToken = await services.tokens.ensureFirstToken();
  if (firstToken) {
    // Printed once, to stderr (never into a shipped JSON log stream); only its hash is stored.
    console.error(
      `\nManagement token (shown once, store it now):\n\n  ${firstToken}\n\nUse it as: Authorization: Bearer <token>. ` +
        `Mint another at any time with: keybrake token create --name NAME\n`,
    );
  }
}

/** `--flag value` pairs of a token subcommand; an unknown or valueless flag is refused. */
function tokenFlags(args: string[], allowed: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (let i = 0; i < args.length; i += 2) {
    const flag = args[i]!;
    if (!allowed.includes(flag)) fail(`unknown option "${flag}" for token; one of ${allowed.join(", ")}`);
    const value = args[i + 1];
    if (value === undefined) fail(`${flag} needs a value`);
    out[flag] = value;
  }
  return out;
}

/**
 * The stores of the configured backend (the data dir, or KEYBRAKE_DATABASE_URL), closed after `run`.
 * Events are recorded as the server records them (actor: the CLI, i.e. whoever holds the database).
 */
async function withStores<T>(config: Config, run: (stores: Stores) => Promise<T>): Promise<T> {
  requireSharedMasterKey(config);
  const backend = await openBackend(config);
  try {
    return await run(openStores(backend, { logger: createLogger("silent"), box: new SecretBox(loadMasterKey(config.dataDir, config.masterKey)) }));
  } finally {
    await closeBackend(backend);
  }
}

const withTokens = <T>(config: Config, run: (tokens: TokenStore) => Promise<T>): Promise<T> =>
  withStores(config, (stores) => run(new TokenStore(stores.tokens, config.adminToken, config.maxKeyTtlMs)));

const CLI_ACTOR = { tokenId: "cli", name: "keybrake token (CLI)" };

async function tokenCommand(config: Config, args: string[]) {
  const [sub, ...rest] = args;
  if (sub === "create") {
    const f = tokenFlags(rest, ["--name", "--role", "--policy"]);
    if (!f["--name"]) fail("token create needs --name NAME");
    let policy: unknown;
    if (f["--policy"] !== undefined) {
      try {
        policy = JSON.parse(f["--policy"]);
      } catch (e) {
        fail(`--policy is not valid JSON: ${(e as Error).message}`);
      }
    }
    try {
      const { token } = await withTokens(config, (t) => t.createFromBody({ name: f["--name"], role: f["--role"], policy }, CLI_ACTOR));
      console.log(token);
    } catch (e) {
      if (e instanceof ApiError) fail(`${e.message}${Array.isArray(e.details) ? "\n" + e.details.map((d: FieldIssue) => `  ${d.field}: ${d.message}`).join("\n") : ""}`);
      throw e;
    }
    return;
  }
  if (sub === "list") {
    tokenFlags(rest, []);
    const rows = (await withTokens(config, (t) => t.list())).map(presentToken);
    for (const r of rows) console.log([r.token_id, r.role, r.status, r.created_at, r.name, r.policy ? JSON.stringify(r.policy) : ""].join("\t").trimEnd());
    return;
  }
  if (sub === "revoke") {
    const id = rest[0];
    if (!id || rest.length > 1) fail("token revoke needs exactly one TOKEN_ID (see keybrake token list)");
    try {
      const r = presentToken(await withTokens(config, (t) => t.revoke(id, CLI_ACTOR)));
      console.log(`revoked ${r.token_id} (${r.name}) at ${r.revoked_at}`);
    } catch (e) {
      if (e instanceof ApiError) fail(e.message);
      throw e;
    }
    return;
  }
  fail(`unknown token command "${args.join(" ")}"; one of create, list, revoke`);
}

/**
 * For a container's health check without curl in the image: GET /healthz of the server this
 * configuration describes; exit 0 on 200, 1 otherwise (draining, database unreachable, not up).
 */
async function healthcheck(config: Config) {
  const url = `${localUrl(config, config.port)}/healthz`;
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(3_000) });
    const body = await res.text();
    if (res.status === 200) return void console.log(body);
    console.error(`keybrake: ${url} answered ${res.status}: ${body.slice(0, 200)}`);
  } catch (e) {
    console.error(`keybrake: ${url}: ${(e as Error).message}`);
  }
  process.exit(1);
}

/** After a lost master key nothing stored can be decrypted: forget it so the secrets can be set again. */
async function secretsReset(config: Config, args: string[]) {
  if (!args.includes("--confirm")) fail("secrets reset deletes every stored vendor secret; run it with --confirm");
  const n = await withStores(config, (stores) => stores.vendorSecrets.reset());
  console.log(`forgot ${n} stored vendor secret field(s) in ${whereStored(config)}; set them again (PUT /vendors/VENDOR, the admin pages or KEYBRAKE_* variables)`);
}

function main(argv: string[]) {
  const [command = "serve", ...rest] = argv;
  if (command === "--help" || command === "-h" || command === "help") return void process.stdout.write(HELP);
  if (command === "version" || command === "--version") return void console.log(VERSION);
  if (command === "demo") return void runDemo().catch((e) => fail(`demo: ${(e as Error).message}`));
  // `keybrake --port 9090` is `keybrake serve --port 9090`.
  const serveArgs = command === "serve" ? rest : command.startsWith("--") ? argv : null;
  let config: Config;
  try {
    config = loadConfig(process.env, serveArgs ? parseFlags(serveArgs) : {});
  } catch (e) {
    if (e instanceof ConfigError) fail(e.message);
    throw e;
  }
  if (serveArgs) return void serve(config).catch((e) => fail((e as Error).message));
  if (command === "token") return void tokenCommand(config, rest).catch((e) => fail((e as Error).message));
  if (command === "healthcheck") return void healthcheck(config);
  if (command === "secrets" && rest[0] === "reset") return void secretsReset(config, rest.slice(1)).catch((e) => fail((e as Error).message));
  fail(`unknown command "${argv.join(" ")}"; see keybrake --help`);
}

try {
  main(process.argv.slice(2));
} catch (e) {
  fail((e as Error).message);
}
