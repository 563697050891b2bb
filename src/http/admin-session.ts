import { Elysia } from "elysia";
import { csrfMatches } from "../domain/admin-sessions.ts";
import type { Services } from "../services.ts";
import { FlashMessage } from "../../views/components.tsx";
import { href } from "../../views/format.ts";
import { CSRF_FIELD, CSRF_HEADER, field, isHtmx, readCookie, render, SESSION_COOKIE } from "./admin-kit.ts";

/**
 * `{ session: true }` on an admin route: the live session behind the cookie (its token re-read, so
 * a revoked token's session is over) and, on anything but GET/HEAD, its CSRF token. Unnamed on
 * purpose: each server instance gets its own, over its own services. Used by every admin plugin.
 */
export function adminSession(s: Services) {
  return new Elysia()
    .macro({
      session: {
        async resolve({ request, body, set, status }) {
          const sessionId = readCookie(request, SESSION_COOKIE);
          const session = await s.adminSessions.find(sessionId);
          if (!session) {
            if (isHtmx(request)) {
              // htmx follows HX-Redirect to the login page instead of swapping this in.
              set.headers["hx-redirect"] = "/admin";
              set.headers["content-type"] = "text/plain; charset=utf-8";
              return status(401, "Sign in again: your admin session has ended.");
            }
            const url = new URL(request.url);
            set.headers.location = href("/admin", { next: request.method === "GET" ? url.pathname + url.search : undefined });
            return status(303, "");
          }
          if (request.method !== "GET" && request.method !== "HEAD") {
            const sent = request.headers.get(CSRF_HEADER) ?? field(body, CSRF_FIELD);
            if (!csrfMatches(session, sent)) {
              set.headers["content-type"] = "text/html; charset=utf-8";
              set.headers["hx-retarget"] = "#flash";
              set.headers["hx-reswap"] = "innerHTML";
              return status(403, render(FlashMessage({ tone: "danger", text: "This form is out of date (missing or wrong CSRF token). Reload the page and try again." })));
            }
          }
          // As authorize() does for the API: the page includes every call this replica has answered.
          await s.forwarder.answeredSettled();
          return { session, sessionId };
        },
      },
    });
}
