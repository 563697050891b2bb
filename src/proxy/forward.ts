import { sha256Hex } from "../domain/crypto.ts";
import { compileAllowlist, isAllowed, joinPath, splitPath, type EndpointRule } from "../domain/endpoints.ts";
import { VAULT_KEY_PREFIX } from "../domain/keys.ts";
import type { AuditOutcome, CallFacts, LiveKey, RepeatGuard, Reservation } from "../domain/ledger.ts";
import { LedgerUnavailable, type SpendLedger } from "../ledger/types.ts";
import type { VendorSecretStore } from "../domain/secrets.ts";
import type { Metrics } from "../metrics.ts";
import { microsToDecimalString } from "../money.ts";
import { formatUsdMicros } from "../money-format.ts";
import { ADAPTERS, vendorForPath } from "../vendors/index.ts";
import { READ_METHODS } from "../vendors/rules.ts";
import type { ObjectRecord, PricedObject, Pricing, PricingContext, VendorAdapter, VendorName } from "../vendors/types.ts";
import type { Logger } from "../log.ts";
import { Deadlines } from "./deadlines.ts";
import { readVaultKey, toDownstreamHeaders, toUpstreamHeaders } from "./headers.ts";
import { LiveKeys } from "./live-keys.ts";

export interface ForwarderDeps {
  ledger: SpendLedger;
  secrets: VendorSecretStore;
  pricing: Pricing;
  metrics: Metrics;
  /** Operator log: one entry per call (src/log.ts). */
  logger: Logger;
  baseUrls: Record<VendorName, string>;
  upstreamTimeoutMs: number;
  maxBodyBytes: number;
  fetch?: typeof fetch;
}

/** Responses larger than this, or not JSON, are streamed through and settled from their status alone. */
const MAX_BUFFERED_RESPONSE = 1024 * 1024;
const UTF8 = new TextDecoder();
/** How long an answer to an Idempotency-Key is kept for replays, as Stripe does. */
export const IDEMPOTENCY_TTL_MS = 24 * 3600 * 1000;

/** Connection may name only these: any other name would strip an end-to-end header Keybrake relies on (Idempotency-Key…). */
const CONNECTION_TOKENS = new Set(["close", "keep-alive"]);
/** What an audit row of an unknown key keeps: a flood of them stores a bounded amount per request. */
const UNKNOWN_KEY_PATH_CHARS = 128;

/** The facts a refusal's audit row keeps: an unknown key's row keeps bounded fields only (the cheapest request anyone can send). */
function auditedFacts(call: CallFacts, key: LiveKey | null): CallFacts {
  return key ? call : { ...call, path: call.path.slice(0, UNKNOWN_KEY_PATH_CHARS), idempotencyKey: null };
}

/** The facts of one call as it ends, for the operator log (src/log.ts): one entry per call. */
interface CallState {
  key: LiveKey | null;
  /** Whether this call's audit row is written (a refusal, or the admission's own row). */
  audited: boolean;
  outcome: AuditOutcome;
  errorCode: string | null;
  costMicros: number;
}

/**
 * One proxied call: identify the key, check it, read the request exactly as the
 * vendor will, price and reserve, forward with the real secret, settle from the
 * answer. Every path through here leaves exactly one audit row and one log entry,
 * and answers in the vendor's error shape, internal failures included.
 */
export class Forwarder {
  private readonly fetchUpstream: typeof fetch;
  private readonly allowlists = new Map<string, EndpointRule[]>(); // allowlists never change after issue
  private readonly deadlines = new Deadlines();
  private readonly keys: LiveKeys;
  /** Settlements committing after their answer was returned (see `afterAnswer`). */
  private readonly settling = new Set<Promise<void>>();

  constructor(private readonly deps: ForwarderDeps) {
    this.fetchUpstream = deps.fetch ?? fetch;
    this.keys = new LiveKeys(deps.ledger);
  }

  /** Resolves once every settlement begun so far has committed (or failed and been logged): shutdown and tests wait on it. */
  async settled(): Promise<void> {
    while (this.settling.size > 0) await Promise.all(this.settling);
  }

  /**
   * Waits for the settlements of the answers already returned, not for later ones (bounded under
   * load): a management read made after an answer on this replica then includes that call.
   */
  async answeredSettled(): Promise<void> {
    await Promise.all([...this.settling]);
  }

  /**
   * A call's settlement commits in the ledger's next group commit, after its answer is on its way
   * (issue 15): the commit is off the answer's critical path. Why that keeps every guarantee:
   * - The money: the reservation committed before forwarding. A settlement lost to a crash leaves
   *   it held and the audit row `reserved` — more held than spent, never the other way round, so
   *   settled + reserved ≤ cap still holds, and what the vendor executed is still counted.
   * - Repeats: until the settlement commits, the call's idempotency record says in flight, so a
   *   replay that arrives first (in this process or any other) waits for it, exactly as for a call
   *   whose vendor has not answered yet; then it gets the stored answer. (On SQLite the settlement
   *   is queued before the answer leaves, so a later admission in this process is ordered after it.)
   * - A settlement that fails (ledger unreachable) is logged; its reservation stays held, as after a crash.
   */
  private afterAnswer(write: Promise<void>): void {
    const p: Promise<void> = write
      .catch((err) => this.deps.logger.error(`proxy: settlement not committed, the reservation stays held: ${(err as Error).message}`))
      .finally(() => this.settling.delete(p));
    this.settling.add(p);
  }

  /** `prefixVendor` is the vendor named by a /{vendor} prefix (null when the SDK cannot add one); `rawPath` follows it. */
  async handle(request: Request, prefixVendor: VendorName | null, rawPath: string, query: string): Promise<Response> {
    const started = performance.now();
    const call: CallFacts = {
      vendor: prefixVendor ?? vendorForPath(rawPath) ?? "stripe",
      method: request.method.toUpperCase().slice(0, 16),
      path: rawPath.slice(0, 2048),
      idempotencyKey: request.headers.get("idempotency-key")?.slice(0, 255) ?? null, // as audited; longer keys are refused below
    };
    const state: CallState = { key: null, audited: false, outcome: "invalid_request", errorCode: null, costMicros: 0 };
    let res: Response;
    try {
      res = await this.handleCall(request, prefixVendor, rawPath, query, call, state, started);
    } catch (err) {
      if (err instanceof LedgerUnavailable) {
        // SPEC §8: no ledger, no money moves — refused in the vendor's shape, never forwarded unchecked.
        this.deps.logger.error(`proxy: ${err.message}`);
        state.outcome = "upstream_error";
        state.errorCode = "unavailable";
        res = this.refusalResponse(ADAPTERS[call.vendor as VendorName] ?? ADAPTERS.stripe, 503, "unavailable", "Keybrake cannot reach its ledger database; nothing was forwarded. Retry shortly.");
      } else {
        // Never Elysia's envelope on the proxy: the SDK must raise its usual exception.
        this.deps.logger.error(`proxy: internal error on ${call.method} ${call.path}: ${(err as Error).message}`);
        state.outcome = "upstream_error";
        state.errorCode = "internal_error";
        res = this.refusalResponse(ADAPTERS[call.vendor as VendorName] ?? ADAPTERS.stripe, 500, "internal_error", "Keybrake failed while handling this call; if it moved money, it is reserved against the cap.");
        res.headers.delete("stripe-should-retry");
      }
      // SPEC §5: every request leaves one row, this one too (best effort: the ledger may be what failed).
      if (!state.audited) {
        await this.deps.ledger.recordRefusal(state.key, auditedFacts(call, state.key), state.outcome, state.errorCode ?? "internal_error", Date.now()).catch(() => {});
      }
    }
    this.deps.logger.call({
      key_id: state.key?.id ?? null,
      agent_run_label: state.key?.agent_run_label ?? null,
      vendor: call.vendor,
      method: call.method,
      path: call.path,
      outcome: state.outcome,
      status: res.status,
      error_code: state.errorCode,
      cost_micros: state.costMicros,
      latency_ms: Math.round((performance.now() - started) * 1000) / 1000,
    });
    return res;
  }

  private async handleCall(request: Request, prefixVendor: VendorName | null, rawPath: string, query: string, call: CallFacts, state: CallState, started: number): Promise<Response> {
    const now = Date.now();
    const { ledger } = this.deps;
    const method = call.method;
    const idempotencyHeader = request.headers.get("idempotency-key");
    const refuse = async (adapter: VendorAdapter, key: LiveKey | null, status: number, outcome: AuditOutcome, code: string, message: string) => {
      await ledger.recordRefusal(key, auditedFacts(call, key), outcome, code, now);
      state.audited = true;
      state.outcome = outcome;
      state.errorCode = code;
      return this.refusal(adapter, status, outcome, code, message);
    };

    // 1. Key known → not revoked → not expired.
    const vaultKey = readVaultKey(request.headers, VAULT_KEY_PREFIX);
    const keyHash = vaultKey ? sha256Hex(vaultKey) : null;
    const key = keyHash ? await this.keys.find(keyHash, now) : null;
    if (!key || !keyHash) {
      return refuse(ADAPTERS[call.vendor as VendorName], null, 401, "invalid_key", "invalid_key", "Unknown vault key. Issue one with POST /vault/keys and send it as this vendor's API key.");
    }
    state.key = key;
    const vendor = key.vendor as VendorName;
    call.vendor = vendor;
    const adapter = ADAPTERS[vendor];
    const dead = (k: LiveKey) =>
      k.revoked_at !== null
        ? refuse(adapter, k, 401, "revoked", "key_revoked", "This vault key has been revoked.")
        : k.expires_at <= now
          ? refuse(adapter, k, 401, "expired", "key_expired", "This vault key has expired.")
          : null;
    const refusedKey = dead(key);
    if (refusedKey) return refusedKey;
    // Read before the headers are made fit to forward (in place, below), which removes these.
    const length = request.headers.get("content-length");
    const chunked = request.headers.get("transfer-encoding") !== null;
    const declared = Number(length ?? 0);
    if (declared > this.deps.maxBodyBytes) {
      return refuse(adapter, key, 413, "invalid_request", "body_too_large", `Request body is larger than ${this.deps.maxBodyBytes} bytes.`);
    }

    // 2. Endpoint allowed, matched on the normalised path that is actually forwarded.
    if (prefixVendor && prefixVendor !== vendor) {
      return refuse(adapter, key, 403, "endpoint_denied", "wrong_vendor", `This vault key is for ${vendor}, not ${prefixVendor}.`);
    }
    const segments = splitPath(rawPath);
    if (typeof segments === "string") {
      return refuse(adapter, key, 403, "endpoint_denied", "endpoint_not_allowed", `Path refused: ${segments}.`);
    }
    const secret = await this.deps.secrets.get(vendor);
    if (!secret) {
      return refuse(adapter, key, 503, "upstream_error", "vendor_not_configured", `Keybrake has no ${vendor} secret configured.`);
    }
    for (const token of (request.headers.get("connection") ?? "").split(",")) {
      const name = token.trim().toLowerCase();
      if (name !== "" && !CONNECTION_TOKENS.has(name)) {
        return refuse(adapter, key, 400, "invalid_request", "ambiguous_request", `The Connection header names "${name.slice(0, 40)}"; Keybrake forwards end-to-end headers as sent, so Connection may only say close or keep-alive.`);
      }
    }
    const upstreamHeaders = toUpstreamHeaders(request.headers);
    const path = adapter.authorize(joinPath(segments), upstreamHeaders, secret);
    call.path = path;
    const forwardedSegments = splitPath(path) as string[];
    if (adapter.credentialPaths.test(path)) {
      return refuse(adapter, key, 403, "endpoint_denied", "credential_endpoint", `${method} ${path} reads or changes ${adapter.name}'s own credentials; Keybrake never forwards it, whatever the allowlist says.`);
    }
    if (!isAllowed(this.allowlist(key), method, forwardedSegments)) {
      return refuse(adapter, key, 403, "endpoint_denied", "endpoint_not_allowed", `${method} ${path} is not in this vault key's allowed_endpoints.`);
    }
    // Stripe-Context (newer Stripe APIs) names the acting account too: both are held to the key's stripe_accounts.
    for (const header of ["stripe-account", "stripe-context"]) {
      const account = request.headers.get(header);
      if (account !== null && !(JSON.parse(key.stripe_accounts ?? "[]") as string[]).includes(account)) {
        return refuse(adapter, key, 403, "endpoint_denied", "stripe_account_not_allowed", `${header === "stripe-account" ? "Stripe-Account" : "Stripe-Context"} "${account.slice(0, 64)}" is not in this vault key's stripe_accounts.`);
      }
    }

    // 3. Read the body exactly as the vendor will (bounded while it streams in), then price it.
    const raw = await readBounded(request, length, chunked, this.deps.maxBodyBytes);
    if (raw === null) {
      return refuse(adapter, key, 413, "invalid_request", "body_too_large", `Request body is larger than ${this.deps.maxBodyBytes} bytes.`);
    }
    const wire = adapter.read({
      method,
      path,
      query,
      contentType: request.headers.get("content-type") ?? "",
      contentEncoding: request.headers.get("content-encoding") ?? "",
      body: raw,
    });
    if (!wire.ok) return refuse(adapter, key, 400, "invalid_request", "ambiguous_request", `Keybrake refused an ambiguous request: ${wire.message}`);
    const body = wire.body;
    // Pricing is synchronous; a ledger that answers after a round trip (PostgreSQL) is asked first and
    // the (pure) estimate run again with its answers. SQLite answers at once: one pass, as before.
    // An object record is written by the settlement of the call that made it, which commits just after
    // that call's answer: a lookup first lets this replica's answered settlements commit, so a client
    // that creates then confirms is priced on the record (a settlement still committing on another
    // replica is not waited for: the record is missed and the call priced from the vendor, at full
    // price — over-counted, never under).
    const known = new Map<string, PricedObject | null>();
    const asked: Promise<void>[] = [];
    let settledFirst: Promise<void> | null = null; // taken at a lookup, not per call: most calls make none
    const ctx: PricingContext = {
      pricing: this.deps.pricing,
      pricedObject: (id) => {
        if (known.has(id)) return known.get(id)!;
        settledFirst ??= this.settling.size > 0 ? this.answeredSettled() : null;
        if (settledFirst) {
          asked.push(settledFirst.then(async () => void known.set(id, await ledger.pricedObject(key.id, id))));
          return null;
        }
        const found = ledger.pricedObject(key.id, id);
        if (!(found instanceof Promise)) return found;
        asked.push(found.then((o) => void known.set(id, o)));
        return null;
      },
    };
    const input = { method, path, query, contentType: "", contentEncoding: "", body, form: wire.form, json: wire.json };
    let estimate = adapter.estimate(input, ctx);
    if (asked.length) {
      await Promise.all(asked);
      estimate = adapter.estimate(input, ctx);
    }
    if (estimate.kind === "lookup") {
      // The vendor is asked on this key's behalf before admission: on the key's row as it is now, not as kept.
      const refusedNow = dead((await this.keys.fresh(keyHash, now)) ?? key);
      if (refusedNow) return refusedNow;
      // Priced from the object as the vendor has it now; this GET is part of the call's latency.
      const found = await this.lookup(adapter, estimate.path, upstreamHeaders);
      if (!found.ok) return refuse(adapter, key, found.status, found.status === 502 ? "upstream_error" : "invalid_request", found.code, found.message);
      estimate = estimate.price(found.object);
    }
    let micros: number;
    let record: ObjectRecord | undefined;
    if (estimate.kind === "invalid" || estimate.kind === "lookup") {
      return refuse(adapter, key, 400, "invalid_request", "cannot_price", estimate.kind === "invalid" ? estimate.message : "Keybrake could not price this call.");
    } else if (estimate.kind === "unpriced") {
      if (estimate.movesMoney) {
        return refuse(adapter, key, 403, "endpoint_denied", "unpriced_endpoint", `${method} ${path} moves money later on terms Keybrake cannot price, so it is refused even with allow_unpriced; name a price for it in the pricing file (fixed_usd) to let it through.`);
      }
      if (!key.allow_unpriced) {
        return refuse(adapter, key, 403, "endpoint_denied", "unpriced_endpoint", `${method} ${path} has no price rule; issue the key with allow_unpriced: true to let it through at $0.`);
      }
      micros = 0;
    } else {
      micros = estimate.micros;
      record = estimate.record;
      // A price is whole micro-dollars or nothing: a NaN or negative estimate would reserve nothing.
      if (!Number.isSafeInteger(micros) || micros < 0) {
        return refuse(adapter, key, 400, "invalid_request", "cannot_price", "Keybrake could not price this call.");
      }
    }

    // 4. Recognise repeats, then reserve atomically (revocation and expiry are re-checked inside the transaction).
    if (idempotencyHeader !== null && idempotencyHeader.length > 255) {
      return refuse(adapter, key, 400, "invalid_request", "invalid_idempotency_key", "Idempotency-Key must be at most 255 characters.");
    }
    if (key.require_idempotency_key && micros > 0 && call.idempotencyKey === null) {
      return refuse(adapter, key, 400, "invalid_request", "idempotency_key_required", `This vault key requires an Idempotency-Key header on calls that move money (${method} ${path}).`);
    }
    const guard = this.repeatGuard(adapter, key, method, path, body, call.idempotencyKey, request.headers);
    const deadline = performance.now() + this.deps.upstreamTimeoutMs + 15_000;
    let admission = await ledger.admit(key, call, micros, Date.now(), guard);
    while (admission.kind === "in_flight") {
      // A duplicate of a call still in flight is never forwarded twice: wait for the first answer, then replay it.
      if (performance.now() > deadline) {
        const res = await refuse(adapter, key, 409, "invalid_request", "idempotency_key_in_use", "A request with this Idempotency-Key is still in progress; retry later.");
        res.headers.set("stripe-should-retry", "true");
        return res;
      }
      await Bun.sleep(10);
      admission = await ledger.admit(key, call, micros, Date.now(), guard);
    }
    state.audited = true; // every admission but in_flight writes the call's row
    switch (admission.kind) {
      case "reserved":
        return this.forward(adapter, admission.reservation, upstreamHeaders, method, path, query, body, started, ctx, record, state);
      case "replay": {
        this.deps.metrics.countRequest(vendor, "replayed");
        state.outcome = "replayed";
        const headers = new Headers(admission.answer.headers);
        headers.set("idempotent-replayed", "true");
        headers.set("x-keybrake-cost-usd", microsToDecimalString(0));
        headers.set("x-keybrake-remaining-usd", microsToDecimalString(admission.remainingMicros));
        return new Response(admission.answer.body as Uint8Array<ArrayBuffer>, { status: admission.answer.status, headers });
      }
      case "mismatch":
        state.errorCode = "idempotency_key_mismatch";
        return this.refusal(adapter, adapter.idempotency.mismatchStatus, "invalid_request", "idempotency_key_mismatch", "Keys for idempotent requests can only be used with the same parameters they were first used with.");
      case "refused": {
        this.deps.metrics.countRequest(vendor, admission.outcome);
        state.outcome = admission.outcome;
        if (admission.outcome === "cap_hit") {
          const scope = admission.capScope ?? { kind: "key" };
          const which = scope.kind === "budget" ? `Budget "${scope.name}" (${scope.budgetId}) reached` : "Spend cap reached";
          state.errorCode = scope.kind === "budget" ? "budget_cap_exceeded" : "cap_exceeded";
          const res = this.refusalResponse(adapter, 429, "cap_exceeded", `${which}: this call would cost ${formatUsdMicros(micros)} and ${formatUsdMicros(admission.remainingMicros)} is left.`);
          res.headers.set("x-keybrake-cap-hit", "true");
          res.headers.set("x-keybrake-cap-scope", scope.kind);
          res.headers.set("x-keybrake-remaining-usd", microsToDecimalString(admission.remainingMicros));
          return res;
        }
        this.keys.forget(keyHash); // revoked or expired since it was kept: the next call is refused at once
        const code = admission.outcome === "revoked" ? "key_revoked" : "key_expired";
        state.errorCode = code;
        return this.refusalResponse(adapter, 401, code, `This vault key has been ${admission.outcome}.`);
      }
    }
  }

  /** GET of the object a call acts on, with the real secret (and the same Stripe-Account), to price the call from it. */
  private async lookup(adapter: VendorAdapter, path: string, upstream: Headers): Promise<{ ok: true; object: Record<string, unknown> } | { ok: false; status: number; code: string; message: string }> {
    const headers = new Headers({ authorization: upstream.get("authorization") ?? "" });
    const account = upstream.get("stripe-account");
    if (account) headers.set("stripe-account", account);
    let res: Response;
    const deadline = this.deadlines.start(this.deps.upstreamTimeoutMs);
    try {
      res = await this.fetchUpstream(this.deps.baseUrls[adapter.name] + path, { method: "GET", headers, redirect: "manual", signal: deadline.signal });
    } catch {
      deadline.done();
      return { ok: false, status: 502, code: "upstream_unreachable", message: `Keybrake could not look up ${path} at ${adapter.name} to price this call; nothing was sent.` };
    }
    let json: unknown;
    try {
      json = await res.json();
    } catch {
      json = undefined;
    } finally {
      deadline.done();
    }
    if (!res.ok || !json || typeof json !== "object" || Array.isArray(json)) {
      return { ok: false, status: 400, code: "cannot_price", message: `Keybrake prices this call from ${path}, which ${adapter.name} answered with ${res.status}; nothing was sent.` };
    }
    return { ok: true, object: json as Record<string, unknown> };
  }

  /**
   * How a repeat of this call is recognised: its Idempotency-Key (kept 24 h), else, where the key has a
   * dedupe window, the call itself. Reads are never deduplicated.
   */
  private repeatGuard(adapter: VendorAdapter, key: LiveKey, method: string, path: string, body: Uint8Array, idempotencyKey: string | null, headers: Headers): RepeatGuard | null {
    if (READ_METHODS.has(method)) return null;
    if (idempotencyKey === null && !key.dedupe_window_ms) return null;
    // The acting account is part of the request: Stripe scopes idempotency per account, so the same key
    // and body sent to another account is another call (it executes again there), never a repeat.
    const account = `${headers.get("stripe-account") ?? ""}\n${headers.get("stripe-context") ?? ""}`;
    const requestHash = new Bun.CryptoHasher("sha256").update(`${method} ${path}\n${account}\n`).update(body).digest("hex");
    const common = { requestHash, staleAfterMs: this.deps.upstreamTimeoutMs + 10_000 };
    if (idempotencyKey !== null) {
      return { idemKey: idempotencyKey, ttlMs: IDEMPOTENCY_TTL_MS, vendorDedupes: adapter.idempotency.vendorDedupes, ...common };
    }
    // Without a key the vendor cannot dedupe a retry, so an unknown outcome is never carried over.
    return { idemKey: `dedupe:${requestHash}`, ttlMs: key.dedupe_window_ms!, vendorDedupes: false, ...common };
  }

  private async forward(
    adapter: VendorAdapter,
    reservation: Reservation,
    headers: Headers,
    method: string,
    path: string,
    query: string,
    body: Uint8Array,
    started: number,
    ctx: PricingContext,
    record: ObjectRecord | undefined,
    state: CallState,
  ): Promise<Response> {
    const { ledger, metrics } = this.deps;
    const url = this.deps.baseUrls[adapter.name] + path + query;
    let upstream: Response;
    let bytes: Uint8Array<ArrayBuffer> | null;
    const deadline = this.deadlines.start(this.deps.upstreamTimeoutMs);
    try {
      upstream = await this.fetchUpstream(url, {
        method,
        headers,
        body: method === "GET" || method === "HEAD" ? undefined : (body as Uint8Array<ArrayBuffer>),
        redirect: "manual",
        signal: deadline.signal,
      });
      // JSON answers are read whole (settlement and replays need them); anything else streams through.
      const type = upstream.headers.get("content-type") ?? "";
      const length = Number(upstream.headers.get("content-length") ?? 0);
      bytes = type.includes("json") && length <= MAX_BUFFERED_RESPONSE ? new Uint8Array(await upstream.arrayBuffer()) : null;
      if (bytes !== null) deadline.done(); // a streamed answer keeps its deadline while it streams, as before
    } catch (err) {
      deadline.done();
      // No answer, or an answer cut off: the vendor may have executed the call.
      const timedOut = (err as Error).name === "TimeoutError";
      const code = timedOut ? "upstream_timeout" : "upstream_unreachable";
      const latencyMs = performance.now() - started;
      this.afterAnswer(ledger.keepUnsettled(reservation, { vendorStatus: null, actualMicros: 0, vendorRequestId: null, vendorObjectId: null, latencyMs }, code));
      metrics.countRequest(adapter.name, "upstream_error");
      Object.assign(state, { outcome: "upstream_error", errorCode: code, costMicros: reservation.micros });
      const res = this.refusalResponse(adapter, timedOut ? 504 : 502, code, timedOut ? `${adapter.name} did not answer in time; the call may have gone through.` : `Lost the connection to ${adapter.name}; the call may have gone through.`);
      res.headers.delete("stripe-should-retry"); // the SDK's own retry (same Idempotency-Key) is the right move here
      res.headers.set("x-keybrake-cost-usd", microsToDecimalString(reservation.micros));
      return res;
    }
    metrics.observeUpstream(adapter.name, (performance.now() - started) / 1000);

    // Parsed for a 2xx only: its object id goes on the audit row and the adapter may settle from it
    // (Twilio's price). Any other answer is passed on, and kept for replays, as the bytes it came as.
    let json: unknown;
    if (bytes && upstream.ok) {
      try {
        json = JSON.parse(UTF8.decode(bytes));
      } catch {
        json = undefined;
      }
    }
    const latencyMs = performance.now() - started;
    const facts = {
      vendorStatus: upstream.status,
      vendorRequestId: adapter.requestId(upstream.headers),
      vendorObjectId: upstream.ok ? adapter.objectId(json) : null,
      latencyMs,
    };

    const out = toDownstreamHeaders(upstream.headers);
    // Kept for replays: definite answers only (a 409 or 429 from the vendor is transient, and a retry should get through).
    // Built only when a repeat guard will store it: without one, nothing ever replays this answer.
    const answer =
      reservation.guard !== null && bytes !== null && upstream.status !== 409 && upstream.status !== 429
        ? { status: upstream.status, headers: [...out] as [string, string][], body: bytes }
        : null;

    let cost: number;
    let remaining = reservation.remainingMicros;
    if (upstream.ok) {
      cost = adapter.settle(reservation.micros, { status: upstream.status, headers: upstream.headers, json }, ctx);
      const objectId = record ? (record.objectId ?? facts.vendorObjectId) : null;
      this.afterAnswer(ledger.settle(reservation, { ...facts, actualMicros: cost }, answer, record && objectId ? { ...record, objectId } : null));
      remaining = Math.max(0, remaining + reservation.micros - cost);
      metrics.addSpend(adapter.name, cost);
      metrics.countRequest(adapter.name, "forwarded");
    } else if (upstream.status < 500) {
      cost = 0; // the vendor refused: no money moved
      this.afterAnswer(ledger.release(reservation, { ...facts, actualMicros: 0 }, answer));
      remaining += reservation.micros;
      metrics.countRequest(adapter.name, "forwarded");
    } else {
      cost = reservation.micros; // outcome unknown: keep the reservation
      this.afterAnswer(ledger.keepUnsettled(reservation, { ...facts, actualMicros: 0 }, "upstream_5xx"));
      metrics.countRequest(adapter.name, "upstream_error");
      Object.assign(state, { outcome: "upstream_error", errorCode: "upstream_5xx" });
    }
    if (upstream.status < 500) state.outcome = "forwarded";
    state.costMicros = cost;

    out.set("x-keybrake-cost-usd", microsToDecimalString(cost));
    out.set("x-keybrake-remaining-usd", microsToDecimalString(remaining));
    return new Response(bytes ?? upstream.body, { status: upstream.status, headers: out });
  }

  private allowlist(key: LiveKey): EndpointRule[] {
    let rules = this.allowlists.get(key.id);
    if (!rules) {
      if (this.allowlists.size >= 10_000) this.allowlists.clear(); // keys are short-lived: a bound, not an LRU
      rules = compileAllowlist(JSON.parse(key.allowed_endpoints) as string[]);
      this.allowlists.set(key.id, rules);
    }
    return rules;
  }

  private refusal(adapter: VendorAdapter, status: number, outcome: AuditOutcome, code: string, message: string): Response {
    this.deps.metrics.countRequest(adapter.name, outcome);
    return this.refusalResponse(adapter, status, code, message);
  }

  private refusalResponse(adapter: VendorAdapter, status: number, code: string, message: string): Response {
    const r = adapter.refusal(status, code, message);
    const headers = new Headers({ "content-type": "application/json", "x-keybrake-error": code, ...r.headers });
    return new Response(JSON.stringify(r.body), { status: r.status, headers });
  }
}

/** The request body, read as it streams in and abandoned past `max` bytes: a large body is never buffered whole. */
async function readBounded(request: Request, length: string | null, chunked: boolean, max: number): Promise<Uint8Array | null> {
  if (!request.body) return new Uint8Array();
  // With a Content-Length (checked ≤ max before this is called) the server delivers exactly that many
  // bytes, so reading it whole is bounded too, and skips the stream reader (~20% of a call's CPU, profiled).
  if (length !== null && !chunked && Number(length) <= max) {
    return new Uint8Array(await request.arrayBuffer());
  }
  const reader = request.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > max) {
      reader.cancel().catch(() => {});
      return null;
    }
    chunks.push(value);
  }
  if (chunks.length === 1) return chunks[0]!;
  const out = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.byteLength;
  }
  return out;
}
