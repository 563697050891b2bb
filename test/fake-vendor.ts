/**
 * A loopback stand-in for api.stripe.com, api.twilio.com and api.resend.com.
 *
 * One Bun server answers for all three vendors (chosen by path: `/v1/…` is Stripe,
 * `/2010-04-01/…` is Twilio, everything else is Resend, whose API lives at the root).
 * Responses are shaped closely enough that the official SDKs parse them as usual,
 * errors included. Tests script failures through `nextBehaviors` / `setDefaultBehavior`
 * and then inspect `calls` (everything received) and `executed` (what "really happened").
 */

import { DEFAULT_USD_MICROS_PER_MAJOR_UNIT, minorUnitsToUsdMicros } from "../src/vendors/currency.ts";
import { countSmsSegments } from "../src/vendors/sms-segments.ts";

export interface RecordedCall {
  vendor: "stripe" | "twilio" | "resend";
  method: string;
  path: string;
  /** The query string without its leading `?` ("" when absent). */
  query: string;
  /** Lower-cased header names, as received. */
  headers: Record<string, string>;
  body: string;
}

export type Behavior =
  | { kind: "normal" }
  /** Answer with this instead (not executed). A string body is sent verbatim; no body gets a vendor-shaped error. */
  | { kind: "status"; status: number; body?: unknown; headers?: Record<string, string> }
  /** Execute (and remember under the idempotency key), then reset the connection without answering. */
  | { kind: "execute-then-drop" }
  /** Execute normally, but answer only after `ms`. */
  | { kind: "delay"; ms: number };

export interface FakeCredentials {
  stripe: string;
  twilioSid: string;
  twilioToken: string;
  resend: string;
}

export interface FakeVendor {
  url: string;
  port: number;
  calls: RecordedCall[];
  executed: RecordedCall[];
  credentials: FakeCredentials;
  nextBehaviors: Behavior[];
  /**
   * The `price` Twilio reports on messages (e.g. "-0.01660"). Null by default, as Twilio
   * answers a send before the price is known. Read on every response, so setting it
   * after a send makes a later fetch of the message show the settled price.
   */
  twilioPrice: string | null;
  /** Content templates Twilio holds (ContentSid → the text it sends). */
  twilioTemplates: Record<string, string>;
  /** Every movement of money the fake executed, in the currency it moved in. */
  moved: MovedMoney[];
  /** All of `moved` in USD micros (Stripe amounts at the built-in rates, rounded up). */
  movedUsdMicros(): number;
  setDefaultBehavior(b: Behavior): void;
  /** Forget calls, executions, queued behaviors, idempotency keys and stored objects; back to normal. */
  reset(): void;
  stop(): Promise<void>;
}

export const DEFAULT_CREDENTIALS: Readonly<FakeCredentials> = {
  stripe: "sk_test_realsecret_51Hxxxxxxxxxxxxxxxxxxxxxx",
  twilioSid: "ACf0e1d2c3b4a5968778695a4b3c2d1e0f",
  twilioToken: "a1b2c3d4e5f60718293a4b5c6d7e8f90",
  resend: "re_realsecret_xxxxxxxxxxxxxxxx",
};

export async function startFakeVendor(opts: Partial<FakeCredentials> = {}): Promise<FakeVendor> {
  const fake = new FakeVendorServer({
    stripe: opts.stripe ?? DEFAULT_CREDENTIALS.stripe,
    twilioSid: opts.twilioSid ?? DEFAULT_CREDENTIALS.twilioSid,
    twilioToken: opts.twilioToken ?? DEFAULT_CREDENTIALS.twilioToken,
    resend: opts.resend ?? DEFAULT_CREDENTIALS.resend,
  });
  fake.listen();
  return fake;
}

// ---------------------------------------------------------------------------
// The server: recording, behaviors, idempotency. Vendor specifics live below.
// ---------------------------------------------------------------------------

type Vendor = RecordedCall["vendor"];

interface Reply {
  status: number;
  body: unknown;
  headers?: Record<string, string>;
}

/** What a route did: its reply, whether it executed, and whether an idempotency key should remember it. */
interface Outcome {
  reply: Reply;
  executed: boolean;
  remember: boolean;
}

/** How a vendor deduplicates retried writes. */
interface IdempotencyRules {
  /** The key this call is deduplicated by, or null when the vendor would not. */
  keyOf(call: RecordedCall): string | null;
  /** A refusal for a malformed key, if the vendor validates them. */
  invalid(key: string): Reply | null;
  /** The refusal for a key reused with a different request. */
  conflict(key: string): Reply;
  /** Extra headers on a replayed answer. */
  replayHeaders: Record<string, string>;
}

interface VendorEmulator {
  /** Null when the credentials are the real ones, else the vendor's refusal. */
  authenticate(call: RecordedCall): Reply | null;
  /** Null for vendors without idempotency keys. */
  idempotency: IdempotencyRules | null;
  route(call: RecordedCall): Outcome;
  /** Headers every response carries (request ids and the like). */
  responseHeaders(call: RecordedCall): Record<string, string>;
  /** Body for a scripted `status` behavior that did not bring one. */
  errorBody(status: number): unknown;
}

interface Remembered {
  fingerprint: string;
  reply: Reply;
}

const NORMAL: Behavior = { kind: "normal" };

class FakeVendorServer implements FakeVendor {
  url = "";
  port = 0;
  calls: RecordedCall[] = [];
  executed: RecordedCall[] = [];
  nextBehaviors: Behavior[] = [];
  twilioPrice: string | null = null;
  twilioTemplates: Record<string, string> = {};
  moved: MovedMoney[] = [];
  private defaultBehavior: Behavior = NORMAL;
  private remembered = new Map<string, Remembered>();
  private emulators: Record<Vendor, VendorEmulator>;
  private server: ReturnType<typeof Bun.serve> | null = null;

  constructor(readonly credentials: FakeCredentials) {
    this.emulators = this.freshEmulators();
  }

  listen(): void {
    this.server = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      development: false,
      idleTimeout: 0, // a long `delay` must not be cut short by the server itself
      fetch: (req) => this.handle(req),
      error: (err) => {
        console.error("fake-vendor crashed:", err);
        return Response.json({ error: { type: "api_error", message: `fake-vendor crashed: ${err.message}` } }, { status: 500 });
      },
    });
    this.port = this.server.port ?? 0; // typed optional for unix-socket servers
    this.url = `http://127.0.0.1:${this.port}`;
  }

  setDefaultBehavior(b: Behavior): void {
    this.defaultBehavior = b;
  }

  reset(): void {
    // Emptied in place so arrays a test already holds stay live.
    this.calls.length = 0;
    this.executed.length = 0;
    this.nextBehaviors.length = 0;
    this.remembered.clear();
    this.defaultBehavior = NORMAL;
    this.twilioPrice = null;
    this.twilioTemplates = {};
    this.moved.length = 0;
    this.emulators = this.freshEmulators();
  }

  movedUsdMicros(): number {
    let total = 0;
    for (const m of this.moved) {
      total += m.currency === "usd_micros" ? m.amount : minorUnitsToUsdMicros(m.amount, m.currency, DEFAULT_USD_MICROS_PER_MAJOR_UNIT[m.currency]!);
    }
    return total;
  }

  async stop(): Promise<void> {
    await this.server?.stop(true);
    this.server = null;
  }

  private freshEmulators(): Record<Vendor, VendorEmulator> {
    return {
      stripe: new StripeEmulator(this.credentials.stripe, this.moved),
      twilio: new TwilioEmulator(this.credentials, () => this.twilioPrice, () => this.twilioTemplates, this.moved),
      resend: new ResendEmulator(this.credentials.resend, this.moved),
    };
  }

  private async handle(req: Request): Promise<Response> {
    const call = await recordCall(req);
    this.calls.push(call);
    const emulator = this.emulators[call.vendor];
    const behavior = this.nextBehaviors.shift() ?? this.defaultBehavior;

    if (behavior.kind === "status") {
      const body = behavior.body === undefined ? emulator.errorBody(behavior.status) : behavior.body;
      return toResponse(call, emulator, { status: behavior.status, body, headers: behavior.headers });
    }

    const { reply, executed } = this.process(call, emulator);
    if (executed) this.executed.push(call);
    if (behavior.kind === "execute-then-drop") return droppedConnection();
    if (behavior.kind === "delay") await Bun.sleep(behavior.ms);
    return toResponse(call, emulator, reply);
  }

  private process(call: RecordedCall, emulator: VendorEmulator): Outcome {
    const refusal = emulator.authenticate(call);
    if (refusal) return { reply: refusal, executed: false, remember: false };
    const rules = emulator.idempotency;
    const key = rules?.keyOf(call) ?? null;
    return rules && key !== null ? this.idempotent(call, emulator, rules, key) : emulator.route(call);
  }

  /** Same key + same request replays the first answer; same key + another request is refused. */
  private idempotent(call: RecordedCall, emulator: VendorEmulator, rules: IdempotencyRules, key: string): Outcome {
    const invalid = rules.invalid(key);
    if (invalid) return { reply: invalid, executed: false, remember: false };

    const slot = `${call.vendor} ${key}`;
    const fingerprint = `${call.method} ${call.path}\n${call.body}`;
    const seen = this.remembered.get(slot);
    if (seen && seen.fingerprint !== fingerprint) {
      return { reply: rules.conflict(key), executed: false, remember: false };
    }
    if (seen) {
      const headers = { ...seen.reply.headers, ...rules.replayHeaders };
      return { reply: { ...seen.reply, headers }, executed: false, remember: false };
    }
    const outcome = emulator.route(call);
    if (outcome.remember) this.remembered.set(slot, { fingerprint, reply: outcome.reply });
    return outcome;
  }
}

async function recordCall(req: Request): Promise<RecordedCall> {
  const url = new URL(req.url);
  return {
    vendor: vendorOf(url.pathname),
    method: req.method,
    path: url.pathname,
    query: url.search.replace(/^\?/, ""),
    headers: Object.fromEntries(req.headers),
    body: await req.text(),
  };
}

function vendorOf(path: string): Vendor {
  if (path.startsWith("/v1/")) return "stripe";
  if (path.startsWith("/2010-04-01/")) return "twilio";
  return "resend";
}

function toResponse(call: RecordedCall, emulator: VendorEmulator, reply: Reply): Response {
  const headers = { "Content-Type": "application/json", ...emulator.responseHeaders(call), ...reply.headers };
  const bodyless = reply.status === 204 || reply.status === 304; // Response() rejects a body on these
  const body = bodyless ? null : typeof reply.body === "string" ? reply.body : JSON.stringify(reply.body);
  return new Response(body, { status: reply.status, headers });
}

/**
 * Bun.serve has no call to close a request's socket. A body stream that fails before
 * its first chunk makes Bun reset the connection before any status line is written,
 * so the client sees ECONNRESET, exactly like a response lost on the way back.
 * (Failing asynchronously keeps Bun from logging the error as unhandled.)
 */
function droppedConnection(): Response {
  return new Response(
    new ReadableStream({
      async pull(controller) {
        await Promise.resolve();
        controller.error(new Error("fake-vendor: connection dropped on purpose"));
      },
    }),
  );
}

// ---------------------------------------------------------------------------
// Small shared helpers
// ---------------------------------------------------------------------------

type Params = Record<string, string>;

interface Route {
  method: string;
  pattern: RegExp;
  names: string[];
  handler: (call: RecordedCall, params: Params) => Outcome;
}

/** `route("GET", "/v1/customers/:id", h)`: `:name` matches one path segment. */
function route(method: string, template: string, handler: Route["handler"]): Route {
  const names: string[] = [];
  const source = template
    .replace(/[.*+?^${}()|[\]\\]/g, "\\$&")
    .replace(/:(\w+)/g, (_, name: string) => {
      names.push(name);
      return "([^/]+)";
    });
  return { method, pattern: new RegExp(`^${source}$`), names, handler };
}

function dispatch(routes: Route[], call: RecordedCall): Outcome | null {
  for (const r of routes) {
    const m = r.method === call.method ? r.pattern.exec(call.path) : null;
    if (!m) continue;
    const params = Object.fromEntries(r.names.map((name, i) => [name, decodeURIComponent(m[i + 1] ?? "")]));
    return r.handler(call, params);
  }
  return null;
}

/** A successful write: it happened, and an idempotency key should replay it (as it was then, hence the copy). */
function executed(body: unknown, status = 200): Outcome {
  return { reply: { status, body: structuredClone(body) }, executed: true, remember: true };
}

/** A successful read: nothing happened. */
function read(body: unknown): Outcome {
  return { reply: { status: 200, body }, executed: false, remember: false };
}

/** Refused before anything happened (so not remembered under an idempotency key either). */
function refused(status: number, body: unknown): Outcome {
  return { reply: { status, body }, executed: false, remember: false };
}

function randomString(length: number, alphabet: string): string {
  const bytes = crypto.getRandomValues(new Uint8Array(length));
  return Array.from(bytes, (b) => alphabet[b % alphabet.length]).join("");
}

const ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const HEX = "0123456789abcdef";
const stripeId = (prefix: string) => `${prefix}_${randomString(24, ALNUM)}`;
const twilioSid = (prefix: string) => prefix + randomString(32, HEX);
const unixNow = () => Math.floor(Date.now() / 1000);

function bearerToken(headers: Record<string, string>): string | null {
  const m = /^Bearer (.+)$/i.exec(headers.authorization ?? "");
  return m?.[1] ?? null;
}

function basicCredentials(headers: Record<string, string>): { user: string; password: string } | null {
  const m = /^Basic (.+)$/i.exec(headers.authorization ?? "");
  if (!m?.[1]) return null;
  let decoded: string;
  try {
    decoded = atob(m[1]);
  } catch {
    return null; // not base64: treated like no credentials at all
  }
  const colon = decoded.indexOf(":");
  return colon < 0 ? { user: decoded, password: "" } : { user: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
}

// ---------------------------------------------------------------------------
// Stripe (form-encoded requests, `{error: {...}}` failures, Request-Id header)
// ---------------------------------------------------------------------------

type StripeObject = Record<string, unknown> & { id: string };

/** Stripe's test tokens that decline, and the decline code each one yields. */
const DECLINING_TOKENS: Record<string, string> = {
  tok_chargeDeclined: "generic_decline",
  tok_chargeDeclinedInsufficientFunds: "insufficient_funds",
};

/**
 * Rack's parse_nested_query, as Stripe's API reads a form body (rack/rack,
 * lib/rack/query_parser.rb): pairs split on `[&;] *` (Rack 2's separator, the more
 * permissive one), `+` and `%XX` unescaped, a repeated key keeps the LAST value,
 * `k[]` appends, brackets nest, and leading `[`/trailing `]` of a name are stripped.
 * Independent of Keybrake's reader on purpose: the fuzz test checks one against the other.
 */
export type RackValue = string | null | RackValue[] | { [k: string]: RackValue };
export class RackTypeError extends Error {}

function rackUnescape(s: string): string {
  const bytes: number[] = [];
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    if (c === "+") bytes.push(0x20);
    else if (c === "%" && /^[0-9A-Fa-f]{2}$/.test(s.slice(i + 1, i + 3))) {
      bytes.push(parseInt(s.slice(i + 1, i + 3), 16));
      i += 2;
    } else for (const b of new TextEncoder().encode(c)) bytes.push(b);
  }
  return new TextDecoder().decode(new Uint8Array(bytes));
}

export function rackParse(qs: string): Record<string, RackValue> {
  const params: Record<string, RackValue> = {};
  if (!qs) return params;
  for (const p of qs.split(/[&;] */)) {
    const eq = p.indexOf("=");
    const k = rackUnescape(eq < 0 ? p : p.slice(0, eq));
    const v = eq < 0 ? null : rackUnescape(p.slice(eq + 1));
    rackNormalize(params, k, v, 100);
  }
  return params;
}

function isHash(v: unknown): v is Record<string, RackValue> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function rackNormalize(params: Record<string, RackValue>, name: string, v: RackValue, depth: number): Record<string, RackValue> | RackValue[] | undefined {
  if (depth <= 0) throw new RackTypeError("too deep");
  const m = /^[\[\]]*([^\[\]]+)\]*/.exec(name);
  const k = m?.[1] ?? "";
  const after = m ? name.slice(m[0].length) : "";
  if (k === "") return v !== null && name === "[]" ? [v] : undefined;
  if (after === "") params[k] = v;
  else if (after === "[") params[name] = v;
  else if (after === "[]") {
    params[k] ??= [];
    if (!Array.isArray(params[k])) throw new RackTypeError(`expected Array for param \`${k}'`);
    (params[k] as RackValue[]).push(v);
  } else if (/^\[\]\[([^\[\]]+)\]$/.test(after) || /^\[\](.+)$/.test(after)) {
    const child = (/^\[\]\[([^\[\]]+)\]$/.exec(after) ?? /^\[\](.+)$/.exec(after))![1]!;
    params[k] ??= [];
    const arr = params[k];
    if (!Array.isArray(arr)) throw new RackTypeError(`expected Array for param \`${k}'`);
    const last = arr[arr.length - 1];
    if (isHash(last) && !(child in last)) rackNormalize(last, child, v, depth - 1);
    else arr.push(rackNormalize({}, child, v, depth - 1) as RackValue);
  } else {
    params[k] ??= {};
    if (!isHash(params[k])) throw new RackTypeError(`expected Hash for param \`${k}'`);
    params[k] = rackNormalize(params[k] as Record<string, RackValue>, after, v, depth - 1) as RackValue;
  }
  return params;
}

/** Stripe reads the query string of a POST too; body parameters win (Rack's `params` = GET.merge(POST)). */
type StripeParams = Record<string, RackValue>;
const str = (p: StripeParams, k: string): string | null => (typeof p[k] === "string" ? (p[k] as string) : null);

function stripeParams(call: RecordedCall): StripeParams | Outcome {
  try {
    return { ...rackParse(call.query), ...rackParse(call.body) };
  } catch (e) {
    return refused(400, { error: { type: "invalid_request_error", message: `Invalid parameters: ${(e as Error).message}` } });
  }
}

/** Stripe amounts: a whole number, as Stripe's integer parser takes it. */
function intParam(p: StripeParams, k: string): number | null {
  const v = str(p, k);
  return v !== null && /^\d+$/.test(v.trim()) ? Number(v.trim()) : null;
}

const STRIPE_CURRENCIES = new Set(Object.keys(DEFAULT_USD_MICROS_PER_MAJOR_UNIT).concat(["xyz_never"]));
function currencyParam(p: StripeParams): string | null {
  const c = str(p, "currency")?.trim().toLowerCase() ?? null;
  return c !== null && STRIPE_CURRENCIES.has(c) ? c : null;
}

/** Money the fake actually moved, in the currency it moved in. */
export interface MovedMoney {
  vendor: Vendor;
  what: string;
  currency: string;
  /** Smallest currency unit (Stripe), or USD micros (Twilio, Resend: currency "usd_micros"). */
  amount: number;
}

class StripeEmulator implements VendorEmulator {
  private paymentIntents = new Map<string, StripeObject>();
  private charges = new Map<string, StripeObject>();
  private customers = new Map<string, StripeObject>();
  private prices = new Map<string, StripeObject>();
  private invoiceItems: StripeObject[] = [];
  private invoices = new Map<string, StripeObject>();
  private p = (h: (p: StripeParams, c: RecordedCall, params: Params) => Outcome) => (c: RecordedCall, params: Params) => {
    const parsed = stripeParams(c);
    return "reply" in parsed && "executed" in parsed ? (parsed as Outcome) : h(parsed as StripeParams, c, params);
  };
  private routes: Route[] = [
    route("POST", "/v1/payment_intents", this.p((f) => this.createPaymentIntent(f))),
    route("GET", "/v1/payment_intents/:id", (_, p) => this.getObject(this.paymentIntents, "payment_intent", p.id!)),
    route("POST", "/v1/payment_intents/:id", this.p((f, _, p) => this.updatePaymentIntent(p.id!, f))),
    route("POST", "/v1/payment_intents/:id/confirm", this.p((_, __, p) => this.settlePaymentIntent(p.id!, "confirm"))),
    route("POST", "/v1/payment_intents/:id/capture", this.p((f, _, p) => this.settlePaymentIntent(p.id!, "capture", intParam(f, "amount_to_capture")))),
    route("POST", "/v1/payment_intents/:id/cancel", (_, p) => this.cancelPaymentIntent(p.id!)),
    route("POST", "/v1/charges", this.p((f) => this.createCharge(f))),
    route("GET", "/v1/charges/:id", (_, p) => this.getObject(this.charges, "charge", p.id!)),
    route("POST", "/v1/refunds", this.p((f) => this.createRefund(f))),
    route("POST", "/v1/transfers", this.p((f) => this.moveMoney("transfer", f))),
    route("POST", "/v1/payouts", this.p((f) => this.moveMoney("payout", f))),
    route("POST", "/v1/topups", this.p((f) => this.moveMoney("topup", f))),
    route("POST", "/v1/customers", this.p((f) => this.createCustomer(f))),
    route("GET", "/v1/customers", (c) => this.listCustomers(new URLSearchParams(c.query))),
    route("GET", "/v1/customers/:id", (_, p) => this.getCustomer(p.id!)),
    route("POST", "/v1/customers/:id/subscriptions", this.p((f, _, p) => this.subscribe(p.id!, f))),
    route("POST", "/v1/subscriptions", this.p((f) => this.subscribe(str(f, "customer") ?? "", f))),
    route("POST", "/v1/prices", this.p((f) => this.createPrice(f))),
    route("POST", "/v1/invoiceitems", this.p((f) => this.createInvoiceItem(f))),
    route("POST", "/v1/invoices", this.p((f) => this.createInvoice(f))),
    route("GET", "/v1/invoices/:id", (_, p) => this.getObject(this.invoices, "invoice", p.id!)),
    route("POST", "/v1/invoices/:id", this.p((f, _, p) => this.updateInvoice(p.id!, f))),
    route("POST", "/v1/invoices/:id/finalize", this.p((f, _, p) => this.finalizeInvoice(p.id!, f))),
    route("POST", "/v1/invoices/:id/pay", (_, p) => this.payInvoice(p.id!)),
    route("GET", "/v1/balance", () => read({ object: "balance", available: [{ amount: 0, currency: "usd" }], pending: [], livemode: false })),
  ];

  constructor(
    private readonly secret: string,
    private readonly moved: MovedMoney[],
  ) {}

  authenticate(call: RecordedCall): Reply | null {
    // stripe-node sends Bearer; curl-style Basic puts the key in the user name.
    const key = bearerToken(call.headers) ?? basicCredentials(call.headers)?.user ?? null;
    if (key === this.secret) return null;
    const message = key
      ? `Invalid API Key provided: ${maskKey(key)}`
      : "You did not provide an API key. You need to provide your API key in the Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').";
    return stripeError(401, { type: "invalid_request_error", message });
  }

  readonly idempotency: IdempotencyRules = {
    keyOf: (call) => (call.method === "POST" ? (call.headers["idempotency-key"] ?? null) : null),
    invalid: () => null,
    conflict: (key) =>
      stripeError(400, {
        type: "idempotency_error",
        message: `Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '${key}' if you meant to execute a different request.`,
      }),
    replayHeaders: { "Idempotent-Replayed": "true" },
  };

  route(call: RecordedCall): Outcome {
    return (
      dispatch(this.routes, call) ??
      refused(404, {
        error: {
          type: "invalid_request_error",
          message: `Unrecognized request URL (${call.method}: ${call.path}). Please see https://stripe.com/docs or we can help at https://support.stripe.com/.`,
        },
      })
    );
  }

  responseHeaders(call: RecordedCall): Record<string, string> {
    const headers: Record<string, string> = { "Request-Id": `req_${randomString(14, ALNUM)}` };
    const key = this.idempotency.keyOf(call);
    if (key !== null) headers["Idempotency-Key"] = key; // Stripe echoes it back
    return headers;
  }

  errorBody(status: number): unknown {
    if (status === 429) {
      return { error: { type: "invalid_request_error", code: "rate_limit", message: "Too many requests hit the API too quickly." } };
    }
    const type = status >= 500 ? "api_error" : "invalid_request_error";
    return { error: { type, message: `Fake Stripe answered ${status} as scripted.` } };
  }

  private move(what: string, currency: string, amount: number): void {
    this.moved.push({ vendor: "stripe", what, currency, amount });
  }

  private getObject(store: Map<string, StripeObject>, kind: string, id: string): Outcome {
    const o = store.get(id);
    return o ? read(o) : noSuch(kind, id, "id");
  }

  private createPaymentIntent(f: StripeParams): Outcome {
    const amount = intParam(f, "amount");
    if (amount === null) return parameterMissing("amount");
    const currency = currencyParam(f);
    if (currency === null) return parameterMissing("currency");
    const pi: StripeObject = {
      id: stripeId("pi"),
      object: "payment_intent",
      amount,
      amount_received: 0,
      capture_method: str(f, "capture_method") ?? "automatic_async",
      created: unixNow(),
      currency,
      customer: str(f, "customer"),
      description: str(f, "description"),
      livemode: false,
      metadata: metadataOf(f),
      payment_method: str(f, "payment_method"),
      status: "requires_payment_method",
    };
    this.paymentIntents.set(pi.id, pi);
    if (str(f, "confirm") === "true") this.confirm(pi);
    return executed(pi);
  }

  /** Amount and currency can change until the intent succeeds. */
  private updatePaymentIntent(id: string, f: StripeParams): Outcome {
    const pi = this.paymentIntents.get(id);
    if (!pi) return noSuch("payment_intent", id, "intent");
    if (pi.status === "succeeded" || pi.status === "canceled") return refused(400, { error: { type: "invalid_request_error", code: "payment_intent_unexpected_state", message: "This PaymentIntent can no longer be updated." } });
    // Stripe validates every parameter before it changes anything: a 400 leaves the intent as it was.
    const amount = f.amount === undefined ? undefined : intParam(f, "amount");
    if (amount === null) return parameterMissing("amount");
    const currency = f.currency === undefined ? undefined : currencyParam(f);
    if (currency === null) return parameterMissing("currency");
    if (amount !== undefined) pi.amount = amount;
    if (currency !== undefined) pi.currency = currency;
    if (str(f, "description") !== null) pi.description = str(f, "description");
    return executed(pi);
  }

  /** Money moves at confirmation, or at capture for manual capture; only once. */
  private confirm(pi: StripeObject): void {
    if (pi.capture_method === "manual") pi.status = "requires_capture";
    else {
      pi.status = "succeeded";
      pi.amount_received = pi.amount;
      this.move("payment_intent", pi.currency as string, pi.amount as number);
    }
  }

  private settlePaymentIntent(id: string, step: "confirm" | "capture", amountToCapture: number | null = null): Outcome {
    const pi = this.paymentIntents.get(id);
    if (!pi) return noSuch("payment_intent", id, "intent");
    if (step === "confirm") {
      if (pi.status !== "requires_payment_method" && pi.status !== "requires_confirmation") return executed(pi); // idempotent in the fake: nothing more moves
      this.confirm(pi);
      return executed(pi);
    }
    if (pi.status === "requires_capture") {
      const amount = Math.min(amountToCapture ?? (pi.amount as number), pi.amount as number);
      Object.assign(pi, { status: "succeeded", amount_received: amount });
      this.move("payment_intent capture", pi.currency as string, amount);
    } else if (pi.status === "requires_payment_method") {
      this.confirm(pi); // the fake has no card flows: capture of an unconfirmed intent confirms it
    }
    return executed(pi);
  }

  private cancelPaymentIntent(id: string): Outcome {
    const pi = this.paymentIntents.get(id);
    if (!pi) return noSuch("payment_intent", id, "intent");
    pi.status = "canceled";
    return executed(pi);
  }

  private createCharge(f: StripeParams): Outcome {
    const amount = intParam(f, "amount");
    if (amount === null) return parameterMissing("amount");
    const currency = currencyParam(f);
    if (currency === null) return parameterMissing("currency");
    const id = stripeId("ch");
    const declineCode = DECLINING_TOKENS[str(f, "source") ?? ""];
    if (declineCode) {
      // Stripe saves declines under the idempotency key: a retry gets the same decline.
      const decline = stripeError(402, {
        type: "card_error",
        code: "card_declined",
        decline_code: declineCode,
        message: "Your card was declined.",
        charge: id,
      });
      return { reply: decline, executed: false, remember: true };
    }
    const charge: StripeObject = {
      id,
      object: "charge",
      amount,
      amount_refunded: 0,
      captured: true,
      created: unixNow(),
      currency,
      customer: str(f, "customer"),
      description: str(f, "description"),
      livemode: false,
      metadata: metadataOf(f),
      paid: true,
      refunded: false,
      status: "succeeded",
    };
    this.charges.set(id, charge);
    this.move("charge", currency, amount);
    return executed(charge);
  }

  /** A refund moves money in its charge's currency, whatever else the request says. */
  private createRefund(f: StripeParams): Outcome {
    const chargeId = str(f, "charge");
    const intentId = str(f, "payment_intent");
    if (!chargeId && !intentId) return parameterMissing("charge");
    const paid = chargeId ? this.charges.get(chargeId) : this.paymentIntents.get(intentId!);
    if (!paid) return chargeId ? noSuch("charge", chargeId, "charge") : noSuch("payment_intent", intentId!, "payment_intent");
    const amount = f.amount !== undefined ? intParam(f, "amount") : (paid.amount as number);
    if (amount === null) return parameterMissing("amount");
    const currency = paid.currency as string;
    this.move("refund", currency, amount);
    return executed({
      id: stripeId("re"),
      object: "refund",
      amount,
      charge: chargeId,
      created: unixNow(),
      currency,
      metadata: metadataOf(f),
      payment_intent: intentId,
      status: "succeeded",
    });
  }

  private moveMoney(kind: string, f: StripeParams): Outcome {
    const amount = intParam(f, "amount");
    if (amount === null) return parameterMissing("amount");
    const currency = currencyParam(f);
    if (currency === null) return parameterMissing("currency");
    this.move(kind, currency, amount);
    return executed({ id: stripeId(kind.slice(0, 2)), object: kind, amount, currency, created: unixNow() });
  }

  private createCustomer(f: StripeParams): Outcome {
    const customer: StripeObject = {
      id: stripeId("cus"),
      object: "customer",
      balance: 0,
      created: unixNow(),
      description: str(f, "description"),
      email: str(f, "email"),
      livemode: false,
      metadata: metadataOf(f),
      name: str(f, "name"),
    };
    this.customers.set(customer.id, customer);
    return executed(customer);
  }

  private getCustomer(id: string): Outcome {
    const customer = this.customers.get(id);
    return customer ? read(customer) : noSuch("customer", id, "id");
  }

  private listCustomers(q: URLSearchParams): Outcome {
    const limit = Number(q.get("limit") ?? 10);
    const all = [...this.customers.values()].reverse(); // newest first, like Stripe
    return read({ object: "list", data: all.slice(0, limit), has_more: all.length > limit, url: "/v1/customers" });
  }

  private createPrice(f: StripeParams): Outcome {
    const amount = intParam(f, "unit_amount");
    const currency = currencyParam(f);
    if (amount === null) return parameterMissing("unit_amount");
    if (currency === null) return parameterMissing("currency");
    const price: StripeObject = { id: stripeId("price"), object: "price", unit_amount: amount, currency };
    this.prices.set(price.id, price);
    return executed(price);
  }

  /** A subscription charges its first period at once (legacy /v1/customers/{id}/subscriptions too). */
  private subscribe(customer: string, f: StripeParams): Outcome {
    if (!this.customers.has(customer)) return noSuch("customer", customer, "customer");
    const items = Array.isArray(f.items) ? f.items : isHash(f.items) ? Object.values(f.items) : [];
    const priceIds = items.map((i) => (isHash(i) && typeof i.price === "string" ? i.price : null)).concat(str(f, "plan") ?? str(f, "price") ?? []);
    const prices = priceIds.filter((id): id is string => id !== null).map((id) => this.prices.get(id));
    if (prices.length === 0 || prices.some((p) => !p)) return parameterMissing("items");
    for (const price of prices) this.move("subscription", price!.currency as string, price!.unit_amount as number);
    return executed({ id: stripeId("sub"), object: "subscription", customer, status: "active" });
  }

  private createInvoiceItem(f: StripeParams): Outcome {
    const amount = intParam(f, "amount");
    const currency = currencyParam(f);
    const customer = str(f, "customer");
    if (amount === null || currency === null || !customer) return parameterMissing("amount");
    const item: StripeObject = { id: stripeId("ii"), object: "invoiceitem", amount, currency, customer, invoice: null };
    this.invoiceItems.push(item);
    return executed(item);
  }

  /** Stripe's default for auto_advance here is true: the invoice finalizes and collects itself. */
  private createInvoice(f: StripeParams): Outcome {
    const customer = str(f, "customer");
    if (!customer) return parameterMissing("customer");
    const items = this.invoiceItems.filter((i) => i.customer === customer && i.invoice === null);
    const id = stripeId("in");
    for (const i of items) i.invoice = id;
    const invoice: StripeObject = {
      id,
      object: "invoice",
      customer,
      status: "draft",
      auto_advance: str(f, "auto_advance") !== "false",
      currency: (items[0]?.currency as string) ?? "usd",
      amount_due: items.reduce((sum, i) => sum + (i.amount as number), 0),
      amount_paid: 0,
    };
    this.invoices.set(id, invoice);
    return executed(invoice);
  }

  private updateInvoice(id: string, f: StripeParams): Outcome {
    const inv = this.invoices.get(id);
    if (!inv) return noSuch("invoice", id, "invoice");
    if (f.auto_advance !== undefined) inv.auto_advance = str(f, "auto_advance") === "true";
    return executed(inv);
  }

  private finalizeInvoice(id: string, f: StripeParams): Outcome {
    const inv = this.invoices.get(id);
    if (!inv) return noSuch("invoice", id, "invoice");
    if (f.auto_advance !== undefined) inv.auto_advance = str(f, "auto_advance") === "true";
    inv.status = "open";
    if (inv.auto_advance) this.collect(inv); // Stripe attempts payment by itself
    return executed(inv);
  }

  private payInvoice(id: string): Outcome {
    const inv = this.invoices.get(id);
    if (!inv) return noSuch("invoice", id, "invoice");
    this.collect(inv);
    return executed(inv);
  }

  private collect(inv: StripeObject): void {
    if (inv.status === "paid") return;
    inv.status = "paid";
    inv.amount_paid = inv.amount_due;
    this.move("invoice", inv.currency as string, inv.amount_due as number);
  }
}

/** `metadata[order]=42` → `{ order: "42" }`. */
function metadataOf(f: StripeParams): Record<string, string> {
  const m = f.metadata;
  if (!isHash(m)) return {};
  return Object.fromEntries(Object.entries(m).filter(([, v]) => typeof v === "string")) as Record<string, string>;
}

function stripeError(status: number, error: Record<string, unknown>): Reply {
  return { status, body: { error } };
}

function parameterMissing(param: string): Outcome {
  const { status, body } = stripeError(400, {
    type: "invalid_request_error",
    code: "parameter_missing",
    param,
    message: `Missing required param: ${param}.`,
  });
  return refused(status, body);
}

function noSuch(kind: string, id: string, param: string): Outcome {
  const { status, body } = stripeError(404, {
    type: "invalid_request_error",
    code: "resource_missing",
    param,
    message: `No such ${kind}: '${id}'`,
  });
  return refused(status, body);
}

/** `sk_test_abcdef…wxyz` → `sk_test_********wxyz`, the way Stripe quotes a bad key. */
function maskKey(key: string): string {
  const prefix = /^[a-z]+_(test|live)_/.exec(key)?.[0] ?? "";
  return `${prefix}${"*".repeat(Math.max(0, key.length - prefix.length - 4))}${key.slice(-4)}`;
}

// ---------------------------------------------------------------------------
// Twilio (Basic sid:token, form-encoded, `{code, message, more_info, status}` failures)
// ---------------------------------------------------------------------------

type TwilioMessage = Record<string, unknown> & { sid: string };

class TwilioEmulator implements VendorEmulator {
  private messages = new Map<string, TwilioMessage>();
  private routes: Route[] = [
    route("POST", "/2010-04-01/Accounts/:account/Messages.json", (c) => this.createMessage(twilioParams(c.body))),
    route("GET", "/2010-04-01/Accounts/:account/Messages/:sid.json", (c, p) => this.fetchMessage(c.path, p.sid!)),
  ];

  constructor(
    private readonly credentials: FakeCredentials,
    private readonly currentPrice: () => string | null,
    private readonly templates: () => Record<string, string>,
    private readonly moved: MovedMoney[],
  ) {}

  authenticate(call: RecordedCall): Reply | null {
    const basic = basicCredentials(call.headers);
    if (basic?.user === this.credentials.twilioSid && basic.password === this.credentials.twilioToken) return null;
    return twilioError(401, 20003, "Authenticate");
  }

  readonly idempotency = null; // Twilio's REST API takes no idempotency keys

  route(call: RecordedCall): Outcome {
    const account = /^\/2010-04-01\/Accounts\/([^/.]+)/.exec(call.path)?.[1];
    const found = account === this.credentials.twilioSid ? dispatch(this.routes, call) : null;
    return found ?? notFound(call.path);
  }

  responseHeaders(): Record<string, string> {
    return { "Twilio-Request-Id": twilioSid("RQ") };
  }

  errorBody(status: number): unknown {
    return twilioError(status, status === 401 ? 20003 : 20000 + status, `Fake Twilio answered ${status} as scripted.`).body;
  }

  private createMessage(f: TwilioParams): Outcome {
    const invalid = validateMessage(f);
    if (invalid) return refused(invalid.status, invalid.body);
    const to = f.get("to")!;
    const rate = twilioRate(to);
    if (rate === null) return refused(400, twilioError(400, 21408, `Permission to send an SMS has not been enabled for the region indicated by the 'To' number: ${to}.`).body);
    let body = f.get("body") ?? "";
    const contentSid = f.get("contentsid");
    if (contentSid) {
      const template = Object.hasOwn(this.templates(), contentSid) ? this.templates()[contentSid] : undefined;
      if (template === undefined) return refused(400, twilioError(400, 21656, "The ContentSid is Invalid.").body);
      body = template;
    }
    if ([...body].length > 1600) return refused(400, twilioError(400, 21617, "The concatenated message body exceeds the 1600 character limit.").body);
    const sid = twilioSid("SM");
    const account = this.credentials.twilioSid;
    const media = f.all("mediaurl");
    const segments = countSmsSegments(body).segments;
    const mms = media.length > 0 || f.get("sendasmms")?.toLowerCase() === "true";
    // MMS is per message in +1; elsewhere Twilio sends an SMS with a link (one more segment).
    const cost = mms ? (to.startsWith("+1") && twilioRate(to) === 8_300 ? 20_000 : (segments + 1) * rate) : segments * rate;
    this.moved.push({ vendor: "twilio", what: mms ? "mms" : "sms", currency: "usd_micros", amount: cost });
    const now = rfc2822(new Date());
    const message: TwilioMessage = {
      account_sid: account,
      api_version: "2010-04-01",
      body,
      date_created: now,
      date_sent: null,
      date_updated: now,
      direction: "outbound-api",
      error_code: null,
      error_message: null,
      from: f.get("from") ?? null,
      messaging_service_sid: f.get("messagingservicesid") ?? null,
      num_media: String(media.length),
      num_segments: String(approximateSegments(body)),
      price: null,
      price_unit: "USD",
      sid,
      status: f.get("from") ? "queued" : "accepted",
      subresource_uris: { media: `/2010-04-01/Accounts/${account}/Messages/${sid}/Media.json` },
      to,
      uri: `/2010-04-01/Accounts/${account}/Messages/${sid}.json`,
    };
    this.messages.set(sid, message);
    return executed(this.withPrice(message), 201);
  }

  private fetchMessage(path: string, sid: string): Outcome {
    const message = this.messages.get(sid);
    return message ? read(this.withPrice(message)) : notFound(path);
  }

  private withPrice(message: TwilioMessage): TwilioMessage {
    return { ...message, price: this.currentPrice() };
  }
}

function twilioError(status: number, code: number, message: string): Reply {
  return { status, body: { code, message, more_info: `https://www.twilio.com/docs/errors/${code}`, status } };
}

function notFound(path: string): Outcome {
  const { status, body } = twilioError(404, 20404, `The requested resource ${path} was not found`);
  return refused(status, body);
}

/**
 * Twilio's form parameters, read as permissively as a server might: names folded to
 * lower case, and a repeated name keeps its LAST value (MediaUrl keeps all).
 */
interface TwilioParams {
  get(name: string): string | undefined;
  all(name: string): string[];
}

function twilioParams(body: string): TwilioParams {
  const pairs = [...new URLSearchParams(body)].map(([k, v]) => [k.toLowerCase(), v] as const);
  return {
    get: (name) => pairs.filter(([k]) => k === name).at(-1)?.[1],
    all: (name) => pairs.filter(([k]) => k === name).map(([, v]) => v),
  };
}

/** What the fake Twilio charges per segment by destination (USD micros); an unlisted region is not enabled. */
const FAKE_TWILIO_RATES: Record<string, number> = { "1": 8_300, "1876": 120_000, "44": 52_000, "49": 99_000, "371": 120_000, "882": 500_000 };

function twilioRate(to: string): number | null {
  const digits = to.replace(/^\+/, "");
  for (let n = Math.min(6, digits.length); n >= 1; n--) {
    const r = FAKE_TWILIO_RATES[digits.slice(0, n)];
    if (r !== undefined) return r;
  }
  return null;
}

function validateMessage(f: TwilioParams): Reply | null {
  if (!f.get("to")) return twilioError(400, 21604, "A 'To' phone number is required.");
  if (!f.get("from") && !f.get("messagingservicesid")) return twilioError(400, 21603, "A 'From' phone number is required.");
  if (!f.get("body") && !f.get("contentsid") && f.all("mediaurl").length === 0) return twilioError(400, 21602, "Message body is required.");
  return null;
}

/** Twilio's date format: `Mon, 23 Nov 2026 12:56:15 +0000`. */
function rfc2822(date: Date): string {
  return date.toUTCString().replace("GMT", "+0000");
}

/**
 * Rough segment count (ASCII as GSM-7: 160, then 153 per part; else UCS-2: 70, then 67).
 * Deliberately not the proxy's own counter, so tests do not check the code against itself.
 */
function approximateSegments(body: string): number {
  const gsm = /^[\x00-\x7f]*$/.test(body);
  const [single, multi] = gsm ? [160, 153] : [70, 67];
  return body.length <= single ? 1 : Math.ceil(body.length / multi);
}

// ---------------------------------------------------------------------------
// Resend (Bearer key, JSON, `{statusCode, name, message}` failures)
// ---------------------------------------------------------------------------

type Json = Record<string, unknown>;

class ResendEmulator implements VendorEmulator {
  private emails = new Map<string, Json & { id: string }>();
  private domains: Json[] = [];
  private routes: Route[] = [
    route("POST", "/emails", (c) => this.sendEmail(c.body)),
    route("POST", "/emails/batch", (c) => this.sendBatch(c.body, c.headers["x-batch-validation"])),
    route("GET", "/emails", () => read({ object: "list", has_more: false, data: [...this.emails.values()].reverse() })),
    route("GET", "/emails/:id", (_, p) => this.getEmail(p.id!)),
    route("GET", "/domains", () => read({ object: "list", has_more: false, data: this.domains })),
    route("POST", "/domains", (c) => this.createDomain(c.body)),
    route("POST", "/audiences", (c) => this.createAudience(c.body)),
    route("POST", "/audiences/:id/contacts", (c, p) => this.addContact(p.id!, c.body)),
    route("POST", "/broadcasts", (c) => this.createBroadcast(c.body)),
    route("POST", "/broadcasts/:id/send", (_, p) => this.sendBroadcast(p.id!)),
  ];
  private audiences = new Map<string, string[]>();
  private broadcasts = new Map<string, { audience: string; sent: boolean }>();

  constructor(
    private readonly secret: string,
    private readonly moved: MovedMoney[],
  ) {}

  /** Resend bills per recipient; a "to" string holding commas is read as that many addresses (the worst case). */
  private bill(what: string, recipients: number): void {
    this.moved.push({ vendor: "resend", what, currency: "usd_micros", amount: recipients * 900 });
  }

  private createAudience(raw: string): Outcome {
    const input = parseJson(raw);
    if (!isObject(input) || typeof input.name !== "string") return refusedBy(resendError(422, "missing_required_field", "Missing `name` field."));
    const id = crypto.randomUUID();
    this.audiences.set(id, []);
    return executed({ object: "audience", id, name: input.name });
  }

  private addContact(audience: string, raw: string): Outcome {
    const input = parseJson(raw);
    const list = this.audiences.get(audience);
    if (!list) return refusedBy(resendError(404, "not_found", "Audience not found"));
    if (!isObject(input) || typeof input.email !== "string") return refusedBy(resendError(422, "missing_required_field", "Missing `email` field."));
    list.push(input.email);
    return executed({ object: "contact", id: crypto.randomUUID() });
  }

  private createBroadcast(raw: string): Outcome {
    const input = parseJson(raw);
    if (!isObject(input) || typeof input.audience_id !== "string" || !this.audiences.has(input.audience_id)) {
      return refusedBy(resendError(422, "validation_error", "A valid `audience_id` is required."));
    }
    const id = crypto.randomUUID();
    this.broadcasts.set(id, { audience: input.audience_id, sent: false });
    if (input.send === true) return this.sendBroadcast(id);
    return executed({ id });
  }

  private sendBroadcast(id: string): Outcome {
    const b = this.broadcasts.get(id);
    if (!b) return refusedBy(resendError(404, "not_found", "Broadcast not found"));
    if (!b.sent) this.bill("broadcast", this.audiences.get(b.audience)!.length);
    b.sent = true;
    return executed({ id });
  }

  /** Per Resend's error reference: no key is 401 missing_api_key, a wrong key is 403 invalid_api_key. */
  authenticate(call: RecordedCall): Reply | null {
    const key = bearerToken(call.headers);
    if (key === this.secret) return null;
    if (!key) return resendError(401, "missing_api_key", "Missing API key in the authorization header");
    return resendError(403, "invalid_api_key", "API key is invalid");
  }

  /** Resend honours Idempotency-Key on sends only, and documents no replay marker. */
  readonly idempotency: IdempotencyRules = {
    keyOf: (call) => {
      const isSend = call.method === "POST" && (call.path === "/emails" || call.path === "/emails/batch");
      return isSend ? (call.headers["idempotency-key"] ?? null) : null;
    },
    invalid: (key) =>
      key.length >= 1 && key.length <= 256 ? null : resendError(400, "invalid_idempotency_key", "The key must be between 1-256 chars."),
    conflict: () => resendError(409, "invalid_idempotent_request", "Same idempotency key used with a different request payload."),
    replayHeaders: {},
  };

  route(call: RecordedCall): Outcome {
    const found = dispatch(this.routes, call);
    if (found) return found;
    const { status, body } = resendError(404, "not_found", "The requested endpoint could not be found.");
    return refused(status, body);
  }

  /** Resend documents rate-limit headers but no request id header. */
  responseHeaders(): Record<string, string> {
    return { "ratelimit-limit": "5", "ratelimit-remaining": "4", "ratelimit-reset": "1" };
  }

  errorBody(status: number): unknown {
    const name = status === 429 ? "rate_limit_exceeded" : status >= 500 ? "internal_server_error" : "application_error";
    return resendError(status, name, `Fake Resend answered ${status} as scripted.`).body;
  }

  private sendEmail(raw: string): Outcome {
    const email = parseJson(raw);
    if (!isObject(email)) return refusedBy(resendError(400, "validation_error", "Invalid JSON body."));
    const invalid = validateEmail(email);
    if (invalid) return refusedBy(invalid);
    this.bill("email", recipientCount(email));
    return executed({ id: this.store(email) });
  }

  private sendBatch(raw: string, validation: string | undefined): Outcome {
    const emails = parseJson(raw);
    if (!Array.isArray(emails) || !emails.every(isObject)) {
      return refusedBy(resendError(422, "validation_error", "The request body must be an array of emails."));
    }
    const invalid = emails.map(validateEmail).find((r) => r !== null);
    if (invalid) return refusedBy(invalid);
    for (const e of emails) this.bill("email", recipientCount(e));
    const data = emails.map((e) => ({ id: this.store(e) }));
    return executed(validation === "permissive" ? { data, errors: [] } : { data });
  }

  private store(email: Json): string {
    const id = crypto.randomUUID();
    this.emails.set(id, {
      object: "email",
      id,
      to: asList(email.to),
      from: email.from,
      created_at: new Date().toISOString(),
      subject: email.subject,
      html: email.html ?? null,
      text: email.text ?? null,
      cc: asList(email.cc),
      bcc: asList(email.bcc),
      reply_to: asList(email.reply_to),
      last_event: "sent",
      scheduled_at: email.scheduled_at ?? null,
    });
    return id;
  }

  private getEmail(id: string): Outcome {
    const email = this.emails.get(id);
    return email ? read(email) : refusedBy(resendError(404, "not_found", "Email not found"));
  }

  private createDomain(raw: string): Outcome {
    const input = parseJson(raw);
    if (!isObject(input) || typeof input.name !== "string") return refusedBy(resendError(422, "missing_required_field", "Missing `name` field."));
    const domain = {
      id: crypto.randomUUID(),
      name: input.name,
      created_at: new Date().toISOString(),
      status: "not_started",
      region: typeof input.region === "string" ? input.region : "us-east-1",
      records: [],
    };
    this.domains.push(domain);
    return executed(domain);
  }
}

function recipientCount(email: Json): number {
  let n = 0;
  for (const f of ["to", "cc", "bcc"]) for (const a of asList(email[f]) ?? []) n += a.split(",").length;
  return n;
}

function resendError(statusCode: number, name: string, message: string): Reply {
  return { status: statusCode, body: { statusCode, name, message } };
}

function refusedBy(reply: Reply): Outcome {
  return refused(reply.status, reply.body);
}

function validateEmail(email: Json): Reply | null {
  for (const field of ["from", "to", "subject"]) {
    if (email[field] === undefined || email[field] === "") return resendError(422, "missing_required_field", `Missing \`${field}\` field.`);
  }
  return null;
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function isObject(v: unknown): v is Json {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function asList(v: unknown): string[] | null {
  if (v === undefined || v === null) return null;
  return (Array.isArray(v) ? v : [v]).map(String);
}
