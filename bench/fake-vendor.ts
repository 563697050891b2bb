/**
 * A minimal, counting stand-in for api.stripe.com used by the bench.
 *
 * The fast fake vendor of the load bench is nginx (bench/nginx-vendor.conf): it
 * costs almost nothing, so what we measure is the proxy. This Bun server exists
 * for the two jobs nginx cannot do without extra modules:
 *   - answer after a fixed delay (FAKE_DELAY_MS, e.g. 50 ms: a real vendor's
 *     latency, which shows whether a proxy serialises slow calls);
 *   - count exactly what reached it (GET /__count, POST /__reset), which is how
 *     bench/contention.ts proves that a cap let exactly N calls through.
 *
 * Usage: bun bench/fake-vendor.ts <port> [delay_ms]
 * It answers POST /v1/payment_intents with the same PaymentIntent JSON and
 * Request-Id header as the nginx fake.
 */

const port = Number(process.argv[2] ?? process.env.FAKE_PORT ?? 0);
const delayMs = Number(process.argv[3] ?? process.env.FAKE_DELAY_MS ?? 0);

let count = 0;
let seq = 0;

/** A Stripe-like PaymentIntent; the id is unique per call like Stripe's. */
export function paymentIntentJson(id: string): string {
  return (
    `{"id":"pi_${id}","object":"payment_intent","amount":2900,"amount_capturable":0,"amount_received":0,` +
    `"capture_method":"automatic","client_secret":"pi_${id}_secret_bench","confirmation_method":"automatic",` +
    `"created":1732363200,"currency":"usd","livemode":false,"metadata":{},"payment_method_types":["card"],` +
    `"status":"requires_payment_method"}`
  );
}

function paymentIntent(): Response {
  const id = `bench${(++seq).toString(36)}`;
  return new Response(paymentIntentJson(id), {
    headers: { "content-type": "application/json", "request-id": `req_${id}`, "stripe-version": "2024-06-20" },
  });
}

const server = Bun.serve({
  hostname: "127.0.0.1",
  port,
  development: false,
  idleTimeout: 0, // keep-alive connections from the proxies must not be cut mid-run
  async fetch(req) {
    const path = new URL(req.url).pathname;
    if (path === "/__count") return Response.json({ count });
    if (path === "/__reset" && req.method === "POST") {
      count = 0;
      return Response.json({ count });
    }
    if (path !== "/v1/payment_intents" || req.method !== "POST") {
      return Response.json({ error: { type: "invalid_request_error", message: "Unrecognized request URL" } }, { status: 404 });
    }
    await req.arrayBuffer(); // read the form body like a real server would
    count++; // counted when executed, before the delay: like a vendor that has already moved the money
    if (delayMs > 0) await Bun.sleep(delayMs);
    return paymentIntent();
  },
});

// Printed for whoever started us (run.sh waits on the port, contention.ts reads it).
console.log(`fake-vendor listening on http://127.0.0.1:${server.port} delay=${delayMs}ms`);

const stop = () => {
  server.stop(true);
  process.exit(0);
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
