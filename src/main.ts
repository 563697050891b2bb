#!/usr/bin/env bun
import { createApp } from "./app.ts";
import { ConfigError, loadConfig, proxyBaseUrl, type Config } from "./config.ts";
import { openDatabase } from "./db/connection.ts";
import { TokenStore } from "./domain/tokens.ts";
import { createServices, MAX_PROXY_BODY_BYTES } from "./services.ts";
import { runDemo } from "./demo.ts";
import { VERSION } from "./version.ts";

const HELP = `keybrake ${VERSION} — spend-cap proxy for Stripe, Twilio and Resend

Usage:
  keybrake [serve]                     start the server (default)
  keybrake token create --name NAME    mint a management API token and print it once
  keybrake demo                        try it: Keybrake + a local fake Stripe/Twilio/Resend, with sample runs
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

function tokenCreate(config: Config, args: string[]) {
  const i = args.indexOf("--name");
  const name = i >= 0 ? args[i + 1] : undefined;
  if (!name) fail("token create needs --name NAME");
  const db = openDatabase(config.dataDir);
  const { token } = new TokenStore(db.sqlite).create(name);
  db.sqlite.close();
  console.log(token);
}

function main(argv: string[]) {
  const [command = "serve", ...rest] = argv;
  if (command === "--help" || command === "-h" || command === "help") return void process.stdout.write(HELP);
  if (command === "version" || command === "--version") return void console.log(VERSION);
  if (command === "demo") return void runDemo().catch((e) => fail(`demo: ${(e as Error).message}`));
  let config: Config;
  try {
    config = loadConfig();
  } catch (e) {
    if (e instanceof ConfigError) fail(e.message);
    throw e;
  }
  if (command === "serve") return serve(config);
  if (command === "token" && rest[0] === "create") return tokenCreate(config, rest.slice(1));
  fail(`unknown command "${argv.join(" ")}"; see keybrake --help`);
}

try {
  main(process.argv.slice(2));
} catch (e) {
  fail((e as Error).message);
}
