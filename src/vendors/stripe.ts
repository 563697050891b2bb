import { minorUnitsToUsdMicros } from "./currency.ts";
import { formValue } from "./form-reader.ts";
import { fixedPrice, matches, READ_METHODS, rules, segmentsOf } from "./rules.ts";
import type { Estimate, PricedObject, PricedRequest, PricingContext, VendorAdapter } from "./types.ts";
import { readWire } from "./wire.ts";

/**
 * Stripe pricing, default deny: every write is priced by a named rule below, named
 * as free, or refused. Amounts are read with the strict Rack-compatible reader
 * (form-reader.ts), so the amount priced is the amount Stripe parses.
 */

/** Creates that move the amount in their body, and the kind of object each one leaves behind. */
const AMOUNT_IN_BODY: [ReturnType<typeof rules>, string | null][] = [
  [rules("POST /v1/payment_intents"), "payment_intent"],
  [rules("POST /v1/charges"), "charge"],
  [rules("POST /v1/transfers"), null],
  [rules("POST /v1/payouts"), null],
  [rules("POST /v1/topups"), null],
];
const REFUND = rules("POST /v1/refunds");
const PAYMENT_INTENT_UPDATE = rules("POST /v1/payment_intents/*");
/** Calls that make an existing object's amount move: priced from its record or its state at Stripe. */
const PAYMENT_INTENT_MONEY = rules("POST /v1/payment_intents/*/confirm", "POST /v1/payment_intents/*/capture");
const CHARGE_CAPTURE = rules("POST /v1/charges/*/capture");
const INVOICE_CREATE = rules("POST /v1/invoices");
const INVOICE_UPDATE = rules("POST /v1/invoices/*");
const INVOICE_FINALIZE = rules("POST /v1/invoices/*/finalize");
const INVOICE_PAY = rules("POST /v1/invoices/*/pay");

/** Writes that move money later on terms not in the request (recurring prices, quotes): refused even with allow_unpriced. */
const MONEY_LATER = rules(
  "POST /v1/subscriptions",
  "POST /v1/subscriptions/*",
  "POST /v1/subscriptions/*/*",
  "POST /v1/subscription_items",
  "POST /v1/subscription_items/*",
  "POST /v1/subscription_schedules",
  "POST /v1/subscription_schedules/*",
  "POST /v1/subscription_schedules/*/*",
  "POST /v1/customers/*/subscriptions",
  "POST /v1/customers/*/subscriptions/*",
  "POST /v1/payment_intents/*/increment_authorization",
  "POST /v1/quotes/*/accept",
  // Other doors to money a named rule above prices: the older refund routes, transfer reversals,
  // credit notes that refund. Refused even with allow_unpriced; use the priced route.
  "POST /v1/charges/*/refund",
  "POST /v1/charges/*/refunds",
  "POST /v1/charges/*/refunds/*",
  "POST /v1/transfers/*/reversals",
  "POST /v1/transfers/*/reversals/*",
  "POST /v1/credit_notes",
  "POST /v1/payouts/*/reverse",
);

/** Writes that provably move no money. Named routes only: anything else that writes is unpriced. */
const FREE_WRITES = rules(
  "POST /v1/customers",
  "POST /v1/customers/*",
  "DELETE /v1/customers/*",
  "POST /v1/products",
  "POST /v1/products/*",
  "DELETE /v1/products/*",
  "POST /v1/prices",
  "POST /v1/prices/*",
  "POST /v1/setup_intents",
  "POST /v1/setup_intents/*",
  "POST /v1/setup_intents/*/confirm",
  "POST /v1/setup_intents/*/cancel",
  "POST /v1/payment_methods",
  "POST /v1/payment_methods/*",
  "POST /v1/payment_methods/*/attach",
  "POST /v1/payment_methods/*/detach",
  "POST /v1/payment_intents/*/cancel",
  "POST /v1/tokens",
  "POST /v1/coupons",
  "POST /v1/coupons/*",
  "DELETE /v1/coupons/*",
  "POST /v1/tax_rates",
  "POST /v1/tax_rates/*",
  "POST /v1/invoices/*/void",
  "POST /v1/invoices/*/send",
  "DELETE /v1/invoices/*",
  "POST /v1/invoiceitems",
  "POST /v1/invoiceitems/*",
  "DELETE /v1/invoiceitems/*",
  "POST /v1/webhook_endpoints",
  "POST /v1/webhook_endpoints/*",
  "DELETE /v1/webhook_endpoints/*",
  "POST /v1/checkout/sessions",
  "POST /v1/checkout/sessions/*/expire",
  "POST /v1/billing_portal/sessions",
);

type Priced = { micros: number } | Estimate;

function usdOf(amount: number, currency: string, ctx: PricingContext, param = "amount"): Priced {
  const code = currency.toLowerCase();
  const rate = ctx.pricing.usdMicrosPerMajorUnit[code];
  if (rate === undefined) {
    return { kind: "invalid", param: "currency", message: `Keybrake has no USD rate for currency "${code}"; add it to the pricing file (currency_rates_usd).` };
  }
  try {
    return { micros: minorUnitsToUsdMicros(amount, code, rate) };
  } catch {
    return { kind: "invalid", param, message: `\`${param}\` is too large to price.` };
  }
}

const isPriced = (p: Priced): p is { micros: number } => !("kind" in p);

function readAmount(text: string | undefined, param = "amount"): number | Estimate {
  if (text === undefined || !/^\d{1,15}$/.test(text)) {
    return { kind: "invalid", param, message: `Keybrake needs a whole-number \`${param}\` to price this call against the cap.` };
  }
  return Number(text);
}

/** An amount parameter the call may leave out: null when absent. */
function optionalAmount(req: PricedRequest, param: string): number | null | Estimate {
  const text = formValue(req.form, param);
  return text === undefined ? null : readAmount(text, param);
}

function readCurrency(text: string | undefined): string | Estimate {
  if (text === undefined) return "usd"; // Stripe itself refuses a create without currency: nothing moves
  if (!/^[A-Za-z]{3}$/.test(text)) return { kind: "invalid", param: "currency", message: "`currency` must be a three-letter ISO code." };
  return text.toLowerCase();
}

/** Amount and currency from a Stripe object as GET returns it. */
function objectMoney(o: Record<string, unknown>, amountField = "amount"): { amount: number; currency: string } | Estimate {
  const amount = o[amountField];
  const currency = o.currency;
  if (typeof amount !== "number" || !Number.isSafeInteger(amount) || amount < 0 || typeof currency !== "string") {
    return { kind: "invalid", message: `Keybrake could not read ${amountField} and currency of this object at Stripe.` };
  }
  return { amount, currency: currency.toLowerCase() };
}

/** The money an existing object will move, less what this key was already charged for it. */
function priceExisting(id: string, kind: string, amount: number, currency: string, ctx: PricingContext, record: PricedObject | null): Estimate {
  const value = usdOf(amount, currency, ctx);
  if (!isPriced(value)) return value;
  const counted = record?.countedMicros ?? 0;
  const micros = Math.max(0, value.micros - counted);
  return { kind: "priced", micros, record: { objectId: id, kind, amount, currency, countedMicros: counted + micros } };
}

/** From this key's record of the object, else from the object as Stripe has it now. */
function fromObject(id: string, kind: string, lookupPath: string, ctx: PricingContext, then: (amount: number, currency: string, record: PricedObject | null) => Estimate): Estimate {
  const record = ctx.pricedObject(id);
  if (record && record.kind === kind) return then(record.amount, record.currency, record);
  return {
    kind: "lookup",
    path: lookupPath,
    price: (o) => {
      const m = objectMoney(o);
      return "kind" in m ? m : then(m.amount, m.currency, null);
    },
  };
}

function priceCreate(req: PricedRequest, kind: string | null, ctx: PricingContext): Estimate {
  const amount = readAmount(formValue(req.form, "amount"));
  if (typeof amount !== "number") return amount;
  const currency = readCurrency(formValue(req.form, "currency"));
  if (typeof currency !== "string") return currency;
  const usd = usdOf(amount, currency, ctx);
  if (!isPriced(usd)) return usd;
  return { kind: "priced", micros: usd.micros, ...(kind ? { record: { objectId: null, kind, amount, currency, countedMicros: usd.micros } } : {}) };
}

/** An update that changes amount or currency is priced at the new value, less what this key already counted for it. */
function pricePaymentIntentUpdate(req: PricedRequest, id: string, ctx: PricingContext): Estimate {
  const amountText = formValue(req.form, "amount");
  const currencyText = formValue(req.form, "currency");
  if (amountText === undefined && currencyText === undefined) return { kind: "priced", micros: 0 };
  const newAmount = amountText === undefined ? null : readAmount(amountText);
  if (newAmount !== null && typeof newAmount !== "number") return newAmount;
  const newCurrency = currencyText === undefined ? null : readCurrency(currencyText);
  if (newCurrency !== null && typeof newCurrency !== "string") return newCurrency;
  return fromObject(id, "payment_intent", `/v1/payment_intents/${encodeURIComponent(id)}`, ctx, (amount, currency, record) =>
    priceExisting(id, "payment_intent", newAmount ?? amount, newCurrency ?? currency, ctx, record),
  );
}

/** A refund moves money in the charge's currency, whatever the request says. */
function priceRefund(req: PricedRequest, ctx: PricingContext): Estimate {
  const charge = formValue(req.form, "charge");
  const intent = formValue(req.form, "payment_intent");
  if ((charge === undefined) === (intent === undefined)) {
    return { kind: "invalid", param: "charge", message: "Keybrake prices a refund from its charge: give exactly one of `charge` or `payment_intent`." };
  }
  if (formValue(req.form, "currency") !== undefined) {
    return { kind: "invalid", param: "currency", message: "A refund is made in its charge's currency; leave out `currency`." };
  }
  const amountText = formValue(req.form, "amount");
  const asked = amountText === undefined ? null : readAmount(amountText);
  if (asked !== null && typeof asked !== "number") return asked;
  const [id, kind, path] = charge !== undefined ? [charge, "charge", `/v1/charges/${encodeURIComponent(charge)}`] : [intent!, "payment_intent", `/v1/payment_intents/${encodeURIComponent(intent!)}`];
  return fromObject(id, kind, path, ctx, (amount, currency) => {
    const usd = usdOf(asked ?? amount, currency, ctx);
    return isPriced(usd) ? { kind: "priced", micros: usd.micros } : usd;
  });
}

/** Collecting an invoice: its amount_due, as Stripe has it now. */
function invoiceLookup(id: string, ctx: PricingContext, collects: (invoice: Record<string, unknown>) => boolean): Estimate {
  return {
    kind: "lookup",
    path: `/v1/invoices/${encodeURIComponent(id)}`,
    price: (inv) => {
      if (!collects(inv)) return { kind: "priced", micros: 0 };
      const m = objectMoney(inv, "amount_due");
      if ("kind" in m) return m;
      const usd = usdOf(m.amount, m.currency, ctx);
      return isPriced(usd) ? { kind: "priced", micros: usd.micros } : usd;
    },
  };
}

function estimate(req: PricedRequest, ctx: PricingContext): Estimate {
  const fixed = fixedPrice(ctx.pricing, "stripe", req.method, req.path);
  if (fixed !== null) return { kind: "priced", micros: fixed };
  if (READ_METHODS.has(req.method)) return { kind: "priced", micros: 0 };
  const { method, path } = req;
  const id = segmentsOf(path)[2] ?? "";
  for (const [rule, kind] of AMOUNT_IN_BODY) if (matches(rule, method, path)) return priceCreate(req, kind, ctx);
  if (matches(REFUND, method, path)) return priceRefund(req, ctx);
  if (matches(PAYMENT_INTENT_MONEY, method, path)) {
    // A capture may ask for more than the amount (overcapture): priced at whichever is larger.
    const asked = path.endsWith("/capture") ? optionalAmount(req, "amount_to_capture") : null;
    if (asked !== null && typeof asked !== "number") return asked;
    return fromObject(id, "payment_intent", `/v1/payment_intents/${encodeURIComponent(id)}`, ctx, (amount, currency, record) =>
      priceExisting(id, "payment_intent", Math.max(amount, asked ?? 0), currency, ctx, record),
    );
  }
  if (matches(CHARGE_CAPTURE, method, path)) {
    const asked = optionalAmount(req, "amount");
    if (asked !== null && typeof asked !== "number") return asked;
    return fromObject(id, "charge", `/v1/charges/${encodeURIComponent(id)}`, ctx, (amount, currency, record) =>
      priceExisting(id, "charge", Math.max(amount, asked ?? 0), currency, ctx, record),
    );
  }
  if (matches(INVOICE_CREATE, method, path) || matches(INVOICE_UPDATE, method, path)) {
    const auto = formValue(req.form, "auto_advance");
    const creating = matches(INVOICE_CREATE, method, path);
    if (creating ? auto !== "false" : auto !== undefined && auto !== "false") {
      return { kind: "invalid", param: "auto_advance", message: "An invoice that auto-advances is collected by Stripe later, unpriced: send auto_advance=false and pay it with POST /v1/invoices/{id}/pay." };
    }
    return { kind: "priced", micros: 0 };
  }
  if (matches(INVOICE_FINALIZE, method, path)) {
    const auto = formValue(req.form, "auto_advance");
    if (auto === "false") return { kind: "priced", micros: 0 };
    return invoiceLookup(id, ctx, (inv) => auto === "true" || inv.auto_advance !== false);
  }
  if (matches(INVOICE_PAY, method, path)) return invoiceLookup(id, ctx, () => true);
  if (matches(PAYMENT_INTENT_UPDATE, method, path)) return pricePaymentIntentUpdate(req, id, ctx);
  if (matches(MONEY_LATER, method, path)) return { kind: "unpriced", movesMoney: true };
  if (matches(FREE_WRITES, method, path)) return { kind: "priced", micros: 0 };
  return { kind: "unpriced" };
}

const IDEMPOTENCY_ERRORS = new Set(["idempotency_key_mismatch", "idempotency_key_in_use"]);
const ERROR_TYPE: Record<number, string> = { 401: "invalid_request_error", 403: "invalid_request_error", 429: "invalid_request_error" };

export const stripe: VendorAdapter = {
  name: "stripe",
  // Ephemeral keys hand a client access to a customer's objects: a credential, never a vault key's business.
  credentialPaths: /^\/v1\/ephemeral_keys(\/|$)/i,
  secretFields: ["secret_key"],
  idempotency: { vendorDedupes: true, mismatchStatus: 400 },
  ownPathPrefixes: ["/v1/"],
  authorize(path, headers, secret) {
    headers.set("authorization", `Bearer ${secret.secret_key}`);
    return path;
  },
  read: (req) => readWire(req, { type: "form", options: { keys: "nested" } }),
  estimate,
  settle: (estimateMicros) => estimateMicros, // Stripe executes exactly the amount in the request
  requestId: (h) => h.get("request-id"),
  objectId: (json) => (json && typeof (json as { id?: unknown }).id === "string" ? (json as { id: string }).id : null),
  refusal(status, code, message) {
    return {
      status,
      body: { error: { type: IDEMPOTENCY_ERRORS.has(code) ? "idempotency_error" : status >= 500 ? "api_error" : (ERROR_TYPE[status] ?? "invalid_request_error"), code, message } },
      headers: { "stripe-should-retry": "false" },
    };
  },
};
