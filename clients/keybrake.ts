/**
 * Keybrake client helper for TypeScript (Bun, Node 18+, Deno, Windmill, Temporal workers).
 *
 * One file, no dependencies: copy it into your project. It covers what a workflow run needs
 * from the management API (issue a vault key, revoke it, revoke a whole run) and tells a
 * Keybrake cap hit apart from everything else, whichever SDK raised it.
 *
 *   const kb = new Keybrake();                      // KEYBRAKE_URL, KEYBRAKE_API_KEY from the env
 *   const key = await kb.issueKey({ vendor: "stripe", daily_usd_cap: 500, total_usd_cap: 500, // the run's budget
 *     allowed_endpoints: ["POST /v1/payment_intents"], expires_in: "6h",
 *     agent_run_label: `billing/${runId}` });
 *   const stripe = new Stripe(key.vault_key, kb.stripeOptions());
 *   try { ... } catch (err) { if (isCapHit(err)) { ... don't retry ... } else throw err; }
 *   finally { await kb.revokeRun(`billing/${runId}`); }
 */

export type Vendor = "stripe" | "twilio" | "resend";

/** POST /vault/keys body. Field names are the API's own. */
export interface IssueKeyRequest {
  vendor: Vendor;
  /** USD per UTC day, up to 6 decimals. */
  daily_usd_cap: number;
  /** `"METHOD /path"`; `*` in a path matches one segment, method `*` any method. */
  allowed_endpoints: string[];
  /** `"30s"`, `"15m"`, `"4h"`, `"7d"`. */
  expires_in: string;
  agent_run_label: string;
  total_usd_cap?: number;
  metadata?: Record<string, string | number | boolean | null>;
  dedupe_window?: string;
  require_idempotency_key?: boolean;
  allow_unpriced?: boolean;
}

export interface VaultKey {
  key_id: string;
  /** Shown only in the issue response: hand it to the SDK as its API key. */
  vault_key: string;
  vendor: Vendor;
  daily_usd_cap: number;
  total_usd_cap: number | null;
  allowed_endpoints: string[];
  agent_run_label: string;
  expires_at: string;
  created_at: string;
  proxy_base_url: string;
  [field: string]: unknown;
}

export interface KeyView extends Omit<VaultKey, "vault_key"> {
  spent_today_usd: number;
  reserved_usd: number;
  remaining_today_usd: number;
  spent_total_usd: number;
}

export interface RunRevocation {
  agent_run_label: string;
  revoked: number;
  data: Omit<VaultKey, "vault_key">[];
}

/** A management API refusal: `{"error": {"code", "message", "details"}}` plus the HTTP status. */
export class KeybrakeError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details?: unknown,
  ) {
    super(message);
    this.name = "KeybrakeError";
  }
}

export interface KeybrakeOptions {
  /** e.g. `https://keybrake.internal:8080`; defaults to `$KEYBRAKE_URL`. */
  url?: string;
  /** A management token; defaults to `$KEYBRAKE_API_KEY`. */
  apiKey?: string;
  fetch?: typeof fetch;
}

const env = (name: string): string | undefined => (globalThis as { process?: { env: Record<string, string | undefined> } }).process?.env[name];

export class Keybrake {
  readonly url: string;
  private readonly apiKey: string;
  private readonly fetch: typeof fetch;

  constructor(opts: KeybrakeOptions = {}) {
    const url = opts.url ?? env("KEYBRAKE_URL");
    const apiKey = opts.apiKey ?? env("KEYBRAKE_API_KEY");
    if (!url) throw new Error("Keybrake: pass { url } or set KEYBRAKE_URL");
    if (!apiKey) throw new Error("Keybrake: pass { apiKey } or set KEYBRAKE_API_KEY (a management token)");
    this.url = url.replace(/\/+$/, "");
    this.apiKey = apiKey;
    this.fetch = opts.fetch ?? fetch;
  }

  issueKey(body: IssueKeyRequest): Promise<VaultKey> {
    return this.call("POST", "/vault/keys", body);
  }

  /** The key (never its secret) with today's spend. */
  getKey(keyId: string): Promise<KeyView> {
    return this.call("GET", `/vault/keys/${encodeURIComponent(keyId)}`);
  }

  /** Revoke one key now. Idempotent: revoking twice returns the same revocation. */
  revokeKey(keyId: string): Promise<KeyView> {
    return this.call("DELETE", `/vault/keys/${encodeURIComponent(keyId)}`);
  }

  /** Revoke every key issued under a run label: the cleanup step of a workflow run. */
  revokeRun(agentRunLabel: string): Promise<RunRevocation> {
    return this.call("POST", "/vault/keys/revoke", { agent_run_label: agentRunLabel });
  }

  /** Base URL for SDKs that take a path prefix (resend-node `baseUrl`, Python `stripe.api_base`). */
  proxyUrl(vendor: Vendor): string {
    return `${this.url}/${vendor}`;
  }

  /**
   * stripe-node options: it cannot take a path prefix, only host/port/protocol, and
   * Keybrake routes a prefix-less `/v1/...` by the vault key's own vendor.
   */
  stripeOptions(): { host: string; port: number; protocol: "http" | "https" } {
    const u = new URL(this.url);
    const protocol = u.protocol === "http:" ? "http" : "https";
    return { host: u.hostname, port: Number(u.port || (protocol === "http" ? 80 : 443)), protocol };
  }

  private async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const res = await this.fetch(this.url + path, {
      method,
      headers: {
        authorization: `Bearer ${this.apiKey}`,
        ...(body === undefined ? {} : { "content-type": "application/json" }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    let json: any = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      // Not JSON (a proxy in front of Keybrake, say): reported below with the raw text.
    }
    if (!res.ok) {
      const e = json?.error;
      throw new KeybrakeError(res.status, e?.code ?? `http_${res.status}`, e?.message ?? (text.slice(0, 200) || res.statusText), e?.details);
    }
    return json as T;
  }
}

const CAP_HIT_HEADER = "x-keybrake-cap-hit";

/**
 * True when `x` is Keybrake refusing a call because the key's spend cap is reached.
 *
 * A cap hit is final for the run: retrying it cannot succeed and only adds audit rows,
 * so callers should record it and move on. Vendors' own 429s (real rate limits) are
 * NOT cap hits and are usually worth retrying, which is why a bare 429 is not enough.
 *
 * Recognises:
 * - a fetch `Response` (or anything with `headers.get`) carrying `X-Keybrake-Cap-Hit: true`;
 * - a stripe-node error (`err.headers`, a plain object or a `Headers`);
 * - a resend-node result `{ data, error, headers }`, or its `error` object;
 * - a twilio-node `RestException`, which keeps neither headers nor the raw body, so the
 *   429 is told apart by Keybrake's own message (or `details.keybrake_error` if present);
 * - a parsed refusal body in any vendor's shape (`keybrake_error` / Stripe `error.code`).
 */
export function isCapHit(x: unknown): boolean {
  if (!x || typeof x !== "object") return false;
  const o = x as Record<string, any>;

  const fromHeaders = headerValue(o.headers, CAP_HIT_HEADER);
  if (fromHeaders !== undefined) return fromHeaders === "true";

  // Bodies: Resend/Twilio refusals carry keybrake_error, Stripe's carry error.code.
  if (o.keybrake_error === "cap_exceeded" || o.details?.keybrake_error === "cap_exceeded") return true;
  if (o.error && typeof o.error === "object") return isCapHit(o.error);
  if (o.code === "cap_exceeded") return true;

  // twilio-node: status 429 with Twilio's generic 20429, so only Keybrake's message identifies it.
  const status = o.status ?? o.statusCode;
  return status === 429 && typeof o.message === "string" && o.message.startsWith("Spend cap reached");
}

function headerValue(headers: unknown, name: string): string | undefined {
  if (!headers || typeof headers !== "object") return undefined;
  const h = headers as { get?: (n: string) => string | null } & Record<string, unknown>;
  if (typeof h.get === "function") return h.get(name) ?? undefined;
  for (const [k, v] of Object.entries(h)) {
    if (k.toLowerCase() === name) return Array.isArray(v) ? String(v[0]) : String(v);
  }
  return undefined;
}
