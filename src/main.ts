#!/usr/bin/env bun
import { createApp } from "./app.ts";
import { ConfigError, loadConfig, proxyBaseUrl, type Config } from "./config.ts";
import { openDatabase } from "./db/connection.ts";
import { EventLog } from "./domain/events.ts";
import { presentToken, TokenStore } from "./domain/tokens.ts";
import { ApiError, type FieldIssue } from "./errors.ts";
import { createLogger } from "./log.ts";
import { createServices, MAX_PROXY_BODY_BYTES } from "./services.ts";
import { VERSION } from "./version.ts";

const HELP = `keybrake ${VERSION} — spend-cap proxy for Stripe, Twilio and Resend

Usage:
  keybrake [serve]                     start the server (default)
  keybrake token create --name NAME [--role admin|issuer|viewer] [--policy JSON]
                                       mint a management API token and print it once
  keybrake token list                  list management tokens (id, role, status, name; never the token)
  keybrake token revoke TOKEN_ID       revoke a token at once (and end its admin sessions)
  keybrake version                     print the version
  keybrake --help                      this text

Configuration is by environment variable (KEYBRAKE_PORT, KEYBRAKE_DATA_DIR, …); see the README.
`;

function fail(message: string): never {
  console.error(`keybrake: ${message}`);
  process.exit(2);
}

function serve(config: Config) {
  const services = createServices(config);
  const firstToken = services.tokens.ensureFirstToken();
  let port = config.port;
  const app = createApp(services, { proxyBaseUrl: () => proxyBaseUrl(config, port) });
  app.listen({ port: config.port, hostname: config.host, maxRequestBodySize: MAX_PROXY_BODY_BYTES + 1024 });
  port = app.server!.port!;
  if (config.log === "info") {
    console.log(`keybrake ${VERSION} listening on http://${config.host}:${port} (data: ${config.dataDir})`);
  }
  if (firstToken) {
    // Printed once, on the start that minted it; only its hash is stored.
    console.log(`\nManagement token (shown once, store it now):\n\n  ${firstToken}\n\nUse it as: Authorization: Bearer <token>\n`);
  }
  const stop = () => {
    app.stop();
    services.db.sqlite.close();
    process.exit(0);
  };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
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

/** The token store on the data dir, recording its events like the server does (actor: the CLI, i.e. whoever has the data dir). */
function withTokens<T>(config: Config, run: (tokens: TokenStore) => T): T {
  const db = openDatabase(config.dataDir);
  try {
    return run(new TokenStore(db.sqlite, config.adminToken, new EventLog(db.sqlite, createLogger("silent")), config.maxKeyTtlMs));
  } finally {
    db.sqlite.close();
  }
}

const CLI_ACTOR = { tokenId: "cli", name: "keybrake token (CLI)" };

function tokenCommand(config: Config, args: string[]) {
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
      const { token } = withTokens(config, (t) => t.createFromBody({ name: f["--name"], role: f["--role"], policy }, CLI_ACTOR));
      console.log(token);
    } catch (e) {
      if (e instanceof ApiError) fail(`${e.message}${Array.isArray(e.details) ? "\n" + e.details.map((d: FieldIssue) => `  ${d.field}: ${d.message}`).join("\n") : ""}`);
      throw e;
    }
    return;
  }
  if (sub === "list") {
    tokenFlags(rest, []);
    const rows = withTokens(config, (t) => t.list()).map(presentToken);
    for (const r of rows) console.log([r.token_id, r.role, r.status, r.created_at, r.name, r.policy ? JSON.stringify(r.policy) : ""].join("\t").trimEnd());
    return;
  }
  if (sub === "revoke") {
    const id = rest[0];
    if (!id || rest.length > 1) fail("token revoke needs exactly one TOKEN_ID (see keybrake token list)");
    try {
      const r = presentToken(withTokens(config, (t) => t.revoke(id, CLI_ACTOR)));
      console.log(`revoked ${r.token_id} (${r.name}) at ${r.revoked_at}`);
    } catch (e) {
      if (e instanceof ApiError) fail(e.message);
      throw e;
    }
    return;
  }
  fail(`unknown token command "${args.join(" ")}"; one of create, list, revoke`);
}

function main(argv: string[]) {
  const [command = "serve", ...rest] = argv;
  if (command === "--help" || command === "-h" || command === "help") return void process.stdout.write(HELP);
  if (command === "version" || command === "--version") return void console.log(VERSION);
  let config: Config;
  try {
    config = loadConfig();
  } catch (e) {
    if (e instanceof ConfigError) fail(e.message);
    throw e;
  }
  if (command === "serve") return serve(config);
  if (command === "token") return tokenCommand(config, rest);
  fail(`unknown command "${argv.join(" ")}"; see keybrake --help`);
}

try {
  main(process.argv.slice(2));
} catch (e) {
  fail((e as Error).message);
}
