import { minorUnitsToUsdMicros } from "./currency.ts";
import { fixedPrice, matches, parseForm, READ_METHODS, rules, segmentsOf } from "./rules.ts";
import type { Estimate, PricedRequest, PricingContext, VendorAdapter } from "./types.ts";

/** Calls that move the amount in their body: priced at amount × currency rate. */
const AMOUNT_IN_BODY = rules(
  "POST /v1/payment_intents",
  "POST /v1/charges",
  "POST /v1/refunds",
  "POST /v1/transfers",
  "POST /v1/payouts",
  "POST /v1/topups",
);

/** Calls on an existing PaymentIntent that move its money: free if it was created (and counted) through Keybrake. */
const PAYMENT_INTENT_MONEY = rules("POST /v1/payment_intents/*/confirm", "POST /v1/payment_intents/*/capture");
const INVOICE_PAY = rules("POST /v1/invoices/*/pay");
const PAYMENT_INTENT_UPDATE = rules("POST /v1/payment_intents/*");

/** Writes that move no money. Everything else that writes is unpriced, and refused unless the key allows it. */
const FREE_WRITES = rules(
  "* /v1/customers",
  "* /v1/customers/*",
  "* /v1/customers/*/*",
  "* /v1/customers/*/*/*",
  "* /v1/products",
  "* /v1/products/*",
  "* /v1/prices",
  "* /v1/prices/*",
  "* /v1/setup_intents",
  "* /v1/setup_intents/*",
  "* /v1/setup_intents/*/*",
  "* /v1/payment_methods",
  "* /v1/payment_methods/*",
  "* /v1/payment_methods/*/*",
  "POST /v1/payment_intents/*/cancel",
  "POST /v1/tokens",
  "* /v1/coupons",
  "* /v1/coupons/*",
  "* /v1/tax_rates",
  "* /v1/tax_rates/*",
  "* /v1/invoices",
  "POST /v1/invoices/*/finalize",
  "POST /v1/invoices/*/void",
  "* /v1/invoiceitems",
  "* /v1/invoiceitems/*",
  "* /v1/webhook_endpoints",
  "* /v1/webhook_endpoints/*",
  "POST /v1/checkout/sessions",
  "POST /v1/checkout/sessions/*/expire",
  "POST /v1/billing_portal/sessions",
);

function priceAmount(amountText: string | null, currency: string | null, ctx: PricingContext): Estimate {
  if (amountText === null || !/^\d+$/.test(amountText)) {
    return { kind: "invalid", param: "amount", message: "Keybrake needs a whole-number `amount` to price this call against the cap." };
  }
  const code = (currency ?? "usd").toLowerCase();
  const rate = ctx.pricing.usdMicrosPerMajorUnit[code];
  if (rate === undefined) {
    return {
      kind: "invalid",
      param: "currency",
      message: `Keybrake has no USD rate for currency "${code}"; add it to the pricing file (currency_rates_usd).`,
    };
  }
  try {
    return { kind: "priced", micros: minorUnitsToUsdMicros(Number(amountText), code, rate) };
  } catch {
    return { kind: "invalid", param: "amount", message: "`amount` is too large to price." };
  }
}

function estimate(req: PricedRequest, ctx: PricingContext): Estimate {
  const fixed = fixedPrice(ctx.pricing, "stripe", req.method, req.path);
  if (fixed !== null) return { kind: "priced", micros: fixed };
  if (READ_METHODS.has(req.method)) return { kind: "priced", micros: 0 };
  const form = parseForm(req.body);
  if (matches(AMOUNT_IN_BODY, req.method, req.path)) return priceAmount(form.get("amount"), form.get("currency"), ctx);
  if (matches(PAYMENT_INTENT_MONEY, req.method, req.path)) {
    const id = segmentsOf(req.path)[2]!;
    if (ctx.createdThroughKeybrake(id)) return { kind: "priced", micros: 0 };
    return { kind: "unpriced" };
  }
  if (matches(PAYMENT_INTENT_UPDATE, req.method, req.path)) {
    // An update that changes the amount is priced at the new amount, to stay on the safe side.
    return form.has("amount") ? priceAmount(form.get("amount"), form.get("currency"), ctx) : { kind: "priced", micros: 0 };
  }
  if (matches(INVOICE_PAY, req.method, req.path)) return { kind: "unpriced" };
  if (matches(FREE_WRITES, req.method, req.path)) return { kind: "priced", micros: 0 };
  return { kind: "unpriced" };
}

const IDEMPOTENCY_ERRORS = new Set(["idempotency_key_mismatch", "idempotency_key_in_use"]);
const ERROR_TYPE: Record<number, string> = { 401: "invalid_request_error", 403: "invalid_request_error", 429: "invalid_request_error" };

export const stripe: VendorAdapter = {
  name: "stripe",
  secretFields: ["secret_key"],
  idempotency: { vendorDedupes: true, mismatchStatus: 400 },
  ownPathPrefixes: ["/v1/"],
  authorize(path, headers, secret) {
    headers.set("authorization", `Bearer ${secret.secret_key}`);
    return path;
  },
  estimate,
  settle: (estimateMicros) => estimateMicros, // Stripe executes exactly the amount in the request
  requestId: (h) => h.get("request-id"),
  objectId: (json) => (json && typeof (json as { id?: unknown }).id === "string" ? (json as { id: string }).id : null),
  refusal(status, code, message) {
    return {
      status,
      body: { error: { type: IDEMPOTENCY_ERRORS.has(code) ? "idempotency_error" : (ERROR_TYPE[status] ?? "invalid_request_error"), code, message } },
      headers: { "stripe-should-retry": "false" },
    };
  },
};
