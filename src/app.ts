import { Elysia } from "elysia";
import { ApiError, errorBody } from "./errors.ts";
import { adminRoutes } from "./http/admin.ts";
import { governanceRoutes } from "./http/governance.ts";
import { managementRoutes } from "./http/management.ts";
import { opsRoutes } from "./http/ops.ts";
import { dispatchVendorFirst, proxyRoutes } from "./http/proxy.ts";
import { isUnreachable } from "./db/pg.ts";
import { LedgerUnavailable } from "./ledger/types.ts";
import type { Services } from "./services.ts";

export interface AppOptions {
  /** Where callers reach this server (reported as proxy_base_url). */
  proxyBaseUrl: () => string;
}

/** Composes the HTTP modules over the services; never listens by itself. */
export function createApp(s: Services, opts: AppOptions) {
  const app = new Elysia()
    .onError(({ error, code }) => {
      if (error instanceof ApiError) return Response.json(errorBody(error.code, error.message, error.details), { status: error.status });
      if (code === "NOT_FOUND") return Response.json(errorBody("not_found", "No such route."), { status: 404 });
      if (code === "PARSE") return Response.json(errorBody("invalid_json", "Body could not be parsed."), { status: 400 });
      // PostgreSQL out of reach (SPEC §8): a 503 that says so, not an internal error.
      if (error instanceof LedgerUnavailable || isUnreachable(error)) {
        return Response.json(errorBody("unavailable", "The database cannot be reached right now; try again shortly."), { status: 503, headers: { "retry-after": "1" } });
      }
      // Anything else is our bug: say so without echoing internals (which could hold request data).
      s.logger.error(`internal error: ${(error as Error)?.stack ?? String(error)}`);
      return Response.json(errorBody("internal_error", "Internal error."), { status: 500 });
    })
    .use(opsRoutes(s))
    .use(proxyRoutes(s.forwarder))
    .use(governanceRoutes(s))
    .use(managementRoutes(s, opts.proxyBaseUrl))
    .use(adminRoutes(s, opts.proxyBaseUrl));
  return dispatchVendorFirst(app, s.forwarder);
}
