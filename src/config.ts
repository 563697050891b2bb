import { z } from "zod";
import { parseDurationMs } from "./duration.ts";
import type { LogMode } from "./log.ts";

/**
 * Configuration is the environment (SPEC §1), parsed once. A bad value stops
 * start-up with one line naming the variable and what is wrong with it.
 */
const duration = (name: string) =>
  z.string().transform((text, ctx) => {
    const ms = parseDurationMs(text);
    if (ms === null || ms <= 0) {
      ctx.addIssue({ code: "custom", message: `${name} must be a positive duration like 30s, 15m, 4h or 7d (got "${text}")` });
      return z.NEVER;
    }
    return ms;
  });

const url = (name: string) =>
  z.string().refine((v) => /^https?:\/\/[^\s/]+/.test(v), { message: `${name} must be an http(s) URL` }).transform((v) => v.replace(/\/+$/, ""));

// Empty values were refused before the schema runs (see loadConfig), so "set" always means a value.
const optionalSecret = z
  .string()
  .transform((v) => v.trim())
  .optional()
  .transform((v) => (v ? v : undefined));

/** A port number written as digits: z.coerce would read "" as 0, i.e. a random port. */
const port = z
  .string()
  .regex(/^\d{1,5}$/, "KEYBRAKE_PORT must be a port number 0-65535 (0: let the OS choose)")
  .transform(Number)
  .refine((n) => n <= 65535, "KEYBRAKE_PORT must be a port number 0-65535 (0: let the OS choose)");

/** KEYBRAKE_AUDIT_RETENTION: a duration of at least an hour, or "forever" (null: never prune). */
const retention = z.string().transform((text, ctx) => {
  if (text.trim() === "forever") return null;
  const ms = parseDurationMs(text);
  if (ms === null || ms < 3_600_000) {
    ctx.addIssue({ code: "custom", message: `KEYBRAKE_AUDIT_RETENTION must be a duration of at least 1h like 90d or 400d, or "forever" (got "${text}")` });
    return z.NEVER;
  }
  return ms;
});

const EnvSchema = z.object({
  KEYBRAKE_PORT: port.default(8080),
  KEYBRAKE_HOST: z.string().min(1).default("0.0.0.0"),
  KEYBRAKE_DATA_DIR: z.string().min(1).default("./keybrake-data"),
  KEYBRAKE_ADMIN_TOKEN: optionalSecret.refine((v) => v === undefined || v.length >= 16, {
    message: "KEYBRAKE_ADMIN_TOKEN must be at least 16 characters",
  }),
  KEYBRAKE_MASTER_KEY: optionalSecret.refine((v) => v === undefined || v.length >= 32, {
    message: "KEYBRAKE_MASTER_KEY must be at least 32 characters",
  }),
  KEYBRAKE_STRIPE_SECRET_KEY: optionalSecret,
  KEYBRAKE_TWILIO_ACCOUNT_SID: optionalSecret,
  KEYBRAKE_TWILIO_AUTH_TOKEN: optionalSecret,
  KEYBRAKE_RESEND_API_KEY: optionalSecret,
  KEYBRAKE_STRIPE_BASE_URL: url("KEYBRAKE_STRIPE_BASE_URL").default("https://api.stripe.com"),
  KEYBRAKE_TWILIO_BASE_URL: url("KEYBRAKE_TWILIO_BASE_URL").default("https://api.twilio.com"),
  KEYBRAKE_RESEND_BASE_URL: url("KEYBRAKE_RESEND_BASE_URL").default("https://api.resend.com"),
  KEYBRAKE_PUBLIC_URL: url("KEYBRAKE_PUBLIC_URL").optional(),
  KEYBRAKE_PRICING_FILE: z.string().min(1).optional(),
  KEYBRAKE_UPSTREAM_TIMEOUT: duration("KEYBRAKE_UPSTREAM_TIMEOUT").default(60_000),
  KEYBRAKE_MAX_KEY_TTL: duration("KEYBRAKE_MAX_KEY_TTL").default(30 * 86_400_000),
  KEYBRAKE_MAX_BODY_BYTES: z.coerce.number().int().positive().default(1024 * 1024),
  KEYBRAKE_AUDIT_RETENTION: retention.default(400 * 86_400_000),
  KEYBRAKE_SHUTDOWN_GRACE: duration("KEYBRAKE_SHUTDOWN_GRACE").default(30_000),
  // SPEC §8. Written like a secret (no flag, never echoed): the URL usually carries the database password.
  KEYBRAKE_DATABASE_URL: z
    .string()
    .refine((v) => /^postgres(ql)?:\/\/[^\s]+$/.test(v.trim()), { message: "KEYBRAKE_DATABASE_URL must be a postgres:// or postgresql:// URL" })
    .optional(),
  KEYBRAKE_LOG: z.enum(["info", "json", "silent"], { error: "KEYBRAKE_LOG must be info, json or silent" }).default("info"),
});

export interface Config {
  port: number;
  host: string;
  dataDir: string;
  adminToken?: string;
  masterKey?: string;
  vendorSecretsFromEnv: {
    stripe?: { secret_key: string };
    twilio?: { account_sid: string; auth_token: string };
    resend?: { api_key: string };
  };
  baseUrls: { stripe: string; twilio: string; resend: string };
  publicUrl?: string;
  pricingFile?: string;
  upstreamTimeoutMs: number;
  maxKeyTtlMs: number;
  /** Largest management-API body; proxied bodies may be up to 50× this (Resend attachments). */
  maxBodyBytes: number;
  log: LogMode;
  /** Audit rows older than this are pruned in the background; null: kept forever. */
  auditRetentionMs: number | null;
  /** SIGTERM/SIGINT: how long calls in flight may take to finish and settle. */
  shutdownGraceMs: number;
  /** SPEC §8: the PostgreSQL database shared by replicas; unset: the embedded SQLite file. */
  databaseUrl?: string;
}

export class ConfigError extends Error {}

/** Every variable Keybrake reads; anything else under KEYBRAKE_ is not ours to judge. */
export const VARIABLES = Object.keys(EnvSchema.shape) as (keyof typeof EnvSchema.shape)[];

/**
 * Variables that may also be given as flags (`--data-dir` ↔ KEYBRAKE_DATA_DIR). Secrets are not:
 * a command line is visible to every user of the machine (ps, /proc/PID/cmdline).
 */
const SECRET_VARIABLES = new Set([
  "KEYBRAKE_ADMIN_TOKEN",
  "KEYBRAKE_MASTER_KEY",
  "KEYBRAKE_STRIPE_SECRET_KEY",
  "KEYBRAKE_TWILIO_ACCOUNT_SID",
  "KEYBRAKE_TWILIO_AUTH_TOKEN",
  "KEYBRAKE_RESEND_API_KEY",
  "KEYBRAKE_DATABASE_URL",
]);
export const FLAGS: ReadonlyMap<string, string> = new Map(
  VARIABLES.filter((v) => !SECRET_VARIABLES.has(v)).map((v) => ["--" + v.slice("KEYBRAKE_".length).toLowerCase().replaceAll("_", "-"), v]),
);

/**
 * `serve` flags → the variables they mirror (`--port 9090` or `--port=9090`). Flags win over the
 * environment; an unknown flag or a flag without a value is refused.
 */
export function parseFlags(args: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    const eq = arg.indexOf("=");
    const flag = eq > 0 ? arg.slice(0, eq) : arg;
    const variable = FLAGS.get(flag);
    if (!variable) throw new ConfigError(`unknown flag "${flag}"; flags: ${[...FLAGS.keys()].join(" ")} (secrets only by environment)`);
    const value = eq > 0 ? arg.slice(eq + 1) : args[++i];
    if (value === undefined || (eq < 0 && value.startsWith("--"))) throw new ConfigError(`${flag} needs a value`);
    out[variable] = value;
  }
  return out;
}

export function loadConfig(env: Record<string, string | undefined> = process.env, flags: Record<string, string> = {}): Config {
  const merged = { ...env, ...flags };
  // Set but empty is a mistake (a templating gap, a missing Kubernetes secret), never "use the default".
  for (const v of VARIABLES) {
    const value = merged[v];
    if (value !== undefined && value.trim() === "") {
      const flag = [...FLAGS].find(([, variable]) => variable === v)?.[0];
      throw new ConfigError(`${v}${flag && v in flags ? ` (${flag})` : ""} is set but empty; give it a value or unset it`);
    }
  }
  const parsed = EnvSchema.safeParse(merged);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const variable = String(issue.path[0] ?? "environment");
    let message = issue.message.startsWith(variable) ? issue.message : `${variable}: ${issue.message}`;
    const flag = [...FLAGS].find(([, v]) => v === variable)?.[0];
    if (flag && variable in flags) message += ` (from ${flag})`;
    throw new ConfigError(message);
  }
  const e = parsed.data;
  const twilioSid = e.KEYBRAKE_TWILIO_ACCOUNT_SID;
  const twilioToken = e.KEYBRAKE_TWILIO_AUTH_TOKEN;
  if (Boolean(twilioSid) !== Boolean(twilioToken)) {
    throw new ConfigError("KEYBRAKE_TWILIO_ACCOUNT_SID and KEYBRAKE_TWILIO_AUTH_TOKEN must be set together");
  }
  return {
    port: e.KEYBRAKE_PORT,
    host: e.KEYBRAKE_HOST,
    dataDir: e.KEYBRAKE_DATA_DIR,
    adminToken: e.KEYBRAKE_ADMIN_TOKEN,
    masterKey: e.KEYBRAKE_MASTER_KEY,
    vendorSecretsFromEnv: {
      stripe: e.KEYBRAKE_STRIPE_SECRET_KEY ? { secret_key: e.KEYBRAKE_STRIPE_SECRET_KEY } : undefined,
      twilio: twilioSid && twilioToken ? { account_sid: twilioSid, auth_token: twilioToken } : undefined,
      resend: e.KEYBRAKE_RESEND_API_KEY ? { api_key: e.KEYBRAKE_RESEND_API_KEY } : undefined,
    },
    baseUrls: {
      stripe: e.KEYBRAKE_STRIPE_BASE_URL,
      twilio: e.KEYBRAKE_TWILIO_BASE_URL,
      resend: e.KEYBRAKE_RESEND_BASE_URL,
    },
    publicUrl: e.KEYBRAKE_PUBLIC_URL,
    pricingFile: e.KEYBRAKE_PRICING_FILE,
    upstreamTimeoutMs: e.KEYBRAKE_UPSTREAM_TIMEOUT,
    maxKeyTtlMs: e.KEYBRAKE_MAX_KEY_TTL,
    maxBodyBytes: e.KEYBRAKE_MAX_BODY_BYTES,
    log: e.KEYBRAKE_LOG,
    auditRetentionMs: e.KEYBRAKE_AUDIT_RETENTION,
    shutdownGraceMs: e.KEYBRAKE_SHUTDOWN_GRACE,
    databaseUrl: e.KEYBRAKE_DATABASE_URL?.trim(),
  };
}

/** The listen address as a browser can use it: a wildcard host reads as localhost. */
export function localUrl(config: Config, boundPort: number): string {
  const wildcard = config.host === "0.0.0.0" || config.host === "::" || config.host === "[::]";
  const host = wildcard ? "localhost" : config.host.includes(":") && !config.host.startsWith("[") ? `[${config.host}]` : config.host;
  return `http://${host}:${boundPort}`;
}

/** The URL callers are told to use: the public URL, else the listen address. */
export function proxyBaseUrl(config: Config, boundPort: number): string {
  return config.publicUrl ?? localUrl(config, boundPort);
}
