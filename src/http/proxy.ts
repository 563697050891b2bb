import { Elysia } from "elysia";
import type { Forwarder } from "../proxy/forward.ts";
import { ADAPTERS } from "../vendors/index.ts";
import { VENDORS, type VendorName } from "../vendors/types.ts";

/**
 * Splits a request target into its raw (still percent-encoded) path and "?query", without
 * re-normalising it. Bun gives an absolute URL built from the Host header, or the bare
 * origin-form target when there is no Host (HTTP/1.0); the path is whatever follows the
 * authority, never a guess from the Host header's length.
 */
export function rawTarget(url: string): { path: string; query: string } {
  let start = 0;
  if (!url.startsWith("/")) {
    const scheme = url.indexOf("://");
    start = scheme < 0 ? url.length : url.indexOf("/", scheme + 3);
    if (start < 0) start = url.length;
  }
  const rest = url.slice(start) || "/";
  const q = rest.indexOf("?");
  return q < 0 ? { path: rest, query: "" } : { path: rest.slice(0, q), query: rest.slice(q) };
}

/** The vendor named by a /{vendor} prefix and the path after it, or an SDK's own path with no prefix; null: not a proxy path. */
export function proxyTarget(path: string): { vendor: VendorName | null; rest: string } | null {
  for (const vendor of VENDORS) {
    if (path.startsWith(`/${vendor}/`)) return { vendor, rest: path.slice(vendor.length + 1) };
  }
  for (const adapter of Object.values(ADAPTERS)) {
    for (const prefix of adapter.ownPathPrefixes) {
      const base = prefix.replace(/\/$/, "");
      if (path === base || path.startsWith(base + "/")) return { vendor: null, rest: path };
    }
  }
  return null;
}

/**
 * Vendor routes: /{vendor}/… and, because stripe-node can only change host and
 * port, each vendor's own paths with no prefix (routed by the key's vendor).
 *
 * Matched in onRequest, on the raw request target, before Elysia's router: the router
 * finds the path by skipping a fixed number of characters of the URL, so a short Host
 * header (`Host: kb`) or none at all (HTTP/1.0) would route `/v1/payment_intents` as
 * `/payment_intents`. Bodies stay unread: the forwarder reads the bytes once.
 */
export function proxyRoutes(forwarder: Forwarder) {
  return new Elysia({ name: "proxy" }).onRequest(({ request }) => {
    const { path, query } = rawTarget(request.url);
    const target = proxyTarget(path);
    if (!target) return;
    return forwarder.handle(request, target.vendor, target.rest, query);
  });
}

/**
 * Vendor calls skip Elysia altogether: the same match as proxyRoutes, made in the server's fetch
 * before Elysia builds its per-request context and runs its hook chain (~7 µs a call, profiled).
 * Everything else goes to Elysia unchanged; proxyRoutes stays for callers of app.handle().
 */
export function dispatchVendorFirst<A extends { fetch: unknown }>(app: A, forwarder: Forwarder): A {
  const general = app.fetch as (request: Request, ...rest: unknown[]) => Response | Promise<Response>;
  (app as { fetch: unknown }).fetch = (request: Request, ...rest: unknown[]) => {
    const { path, query } = rawTarget(request.url);
    const target = proxyTarget(path);
    return target ? forwarder.handle(request, target.vendor, target.rest, query) : general(request, ...rest);
  };
  return app;
}
