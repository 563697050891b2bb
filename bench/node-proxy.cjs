/**
 * http-proxy (npm) on Node: the "plain JavaScript proxy" reference. No ledger,
 * no auth, no audit: every request is piped to the target as-is. Keybrake must
 * beat this by a margin (it runs on Bun and does strictly more work per call).
 *
 * Usage: node bench/node-proxy.cjs <listen_port> <target_base_url>
 */
"use strict";
const http = require("node:http");
const httpProxy = require("http-proxy");

const [listenPort, target] = process.argv.slice(2);
if (!listenPort || !target) {
  console.error("usage: node bench/node-proxy.cjs <listen_port> <target_base_url>");
  process.exit(2);
}

// Keep-alive to the upstream (like nginx's `keepalive` and Bun's fetch pool);
// without an agent http-proxy sends `Connection: close` and opens a socket per call.
const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
const proxy = httpProxy.createProxyServer({ target, agent });

proxy.on("error", (err, _req, res) => {
  // A refused or reset upstream must still answer the client, or wrk waits for its timeout.
  if (!res.headersSent) res.writeHead(502, { "content-type": "text/plain" });
  res.end(`proxy error: ${err.code ?? err.message}`);
});

const server = http.createServer((req, res) => proxy.web(req, res));
server.keepAliveTimeout = 120_000; // wrk keeps its connections for the whole run
server.listen(Number(listenPort), "127.0.0.1", () => {
  console.log(`node-proxy listening on http://127.0.0.1:${listenPort} -> ${target}`);
});

const stop = () => {
  server.close();
  agent.destroy();
  process.exit(0);
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
