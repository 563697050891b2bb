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

const optionalSecret = z
  .string()
  .transform((v) => v.trim())
  .optional()
  .transform((v) => (v ? v : undefined));

const EnvSchema = z.object({
  KEYBRAKE_PORT: z.coerce.number().int().min(0).max(65535).default(8080),
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
}

export class ConfigError extends Error {}

export function loadConfig(env: Record<string, string | undefined> = process.env): Config {
  const parsed = EnvSchema.safeParse(env);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const variable = String(issue.path[0] ?? "environment");
    const message = issue.message.startsWith(variable) ? issue.message : `${variable}: ${issue.message}`;
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
  };
}

/** The URL callers are told to use: the public URL, else the listen address (0.0.0.0 reads as localhost). */
export function proxyBaseUrl(config: Config, boundPort: number): string {
  if (config.publicUrl) return config.publicUrl;
  const host = config.host === "0.0.0.0" || config.host === "::" ? "localhost" : config.host;
  return `http://${host}:${boundPort}`;
}
