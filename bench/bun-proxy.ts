/**
 * The Bun floor: the thinnest proxy Bun can run (Bun.serve + fetch, no Elysia,
 * no ledger, no checks). Not a product target; it separates what the runtime
 * costs from what Keybrake's own work costs, since Keybrake can never be
 * faster than this on the same machine.
 *
 * Usage: bun bench/bun-proxy.ts <listen_port> <target_base_url>
 */
const [portArg, target] = process.argv.slice(2);
if (!portArg || !target) {
  console.error("usage: bun bench/bun-proxy.ts <listen_port> <target_base_url>");
  process.exit(2);
}

const server = Bun.serve({
  hostname: "127.0.0.1",
  port: Number(portArg),
  development: false,
  async fetch(req) {
    const url = req.url;
    const path = url.slice(url.indexOf("/", url.indexOf("//") + 2));
    const headers = new Headers(req.headers);
    headers.delete("host");
    headers.set("authorization", "Bearer sk_test_floor"); // the one thing every vendor proxy must do
    const upstream = await fetch(target + path, {
      method: req.method,
      headers,
      body: req.method === "GET" || req.method === "HEAD" ? undefined : await req.arrayBuffer(),
    });
    return new Response(await upstream.arrayBuffer(), { status: upstream.status, headers: upstream.headers });
  },
});
console.log(`bun-proxy listening on http://127.0.0.1:${server.port} -> ${target}`);

const stop = () => {
  server.stop(true);
  process.exit(0);
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);

export {}; // a module, so its top-level names stay its own
