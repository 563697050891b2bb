import { Elysia } from "elysia";
import type { Forwarder } from "../proxy/forward.ts";
import { ADAPTERS } from "../vendors/index.ts";
import { VENDORS, type VendorName } from "../vendors/types.ts";

/** Splits a request URL into its raw (still percent-encoded) path and "?query", without re-normalising it. */
function rawTarget(url: string): { path: string; query: string } {
  const start = url.indexOf("/", url.indexOf("//") + 2);
  const q = url.indexOf("?", start);
  return q < 0 ? { path: url.slice(start), query: "" } : { path: url.slice(start, q), query: url.slice(q) };
}

/**
 * Vendor routes: /{vendor}/… and, because stripe-node can only change host and
 * port, each vendor's own paths with no prefix (routed by the key's vendor).
 * Bodies stay unparsed: the forwarder reads the bytes once.
 */
export function proxyRoutes(forwarder: Forwarder) {
  const app = new Elysia({ name: "proxy" });
  for (const vendor of VENDORS) {
    app.all(
      `/${vendor}/*`,
      ({ request }) => {
        const { path, query } = rawTarget(request.url);
        return forwarder.handle(request, vendor as VendorName, path.slice(vendor.length + 1), query);
      },
      { parse: "none" },
    );
  }
  const unprefixed = ({ request }: { request: Request }) => {
    const { path, query } = rawTarget(request.url);
    return forwarder.handle(request, null, path, query);
  };
  for (const adapter of Object.values(ADAPTERS)) {
    for (const prefix of adapter.ownPathPrefixes) {
      const base = prefix.replace(/\/$/, "");
      app.all(base, unprefixed, { parse: "none" });
      app.all(`${base}/*`, unprefixed, { parse: "none" });
    }
  }
  return app;
}
