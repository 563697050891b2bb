/**
 * The small HTTP vocabulary of the admin pages: the session cookie, the
 * headers every admin answer carries, and reading plain form fields.
 */

export const SESSION_COOKIE = "kb_session";
export const CSRF_HEADER = "x-csrf-token";
export const CSRF_FIELD = "_csrf";

/** htmx is loaded from our own origin and no page needs inline script or style, so CSP can be strict. */
export const ADMIN_HEADERS: Readonly<Record<string, string>> = {
  "content-security-policy":
    "default-src 'self'; style-src 'self'; script-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
  "x-frame-options": "DENY",
  "x-content-type-options": "nosniff",
  "referrer-policy": "same-origin",
  // Pages can show a freshly issued vault key: never keep them in a cache.
  "cache-control": "no-store",
};

export function readCookie(request: Request, name: string): string | null {
  const header = request.headers.get("cookie");
  if (!header) return null;
  for (const part of header.split(";")) {
    const eq = part.indexOf("=");
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim() || null;
  }
  return null;
}

/** Secure when the browser talks https to us or to the proxy in front of us. */
export function cameOverHttps(request: Request): boolean {
  if (request.url.startsWith("https:")) return true;
  return request.headers.get("x-forwarded-proto")?.split(",")[0]?.trim().toLowerCase() === "https";
}

export function sessionCookie(request: Request, value: string, maxAgeSeconds: number): string {
  const secure = cameOverHttps(request) ? "; Secure" : "";
  return `${SESSION_COOKIE}=${value}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=${maxAgeSeconds}${secure}`;
}

export function isHtmx(request: Request): boolean {
  return request.headers.get("hx-request") === "true";
}

/** Views are synchronous; a Promise here would mean an async component slipped in. */
export function render(view: string | Promise<string>): string {
  if (typeof view !== "string") throw new Error("admin views must render synchronously");
  return view;
}

export function html(view: string | Promise<string>, status = 200, headers: Record<string, string> = {}): Response {
  return new Response("<!doctype html>" + render(view), { status, headers: { "content-type": "text/html; charset=utf-8", ...headers } });
}

/** A fragment for htmx to swap in: no doctype. */
export function fragment(view: string | Promise<string>, status = 200, headers: Record<string, string> = {}): Response {
  return new Response(render(view), { status, headers: { "content-type": "text/html; charset=utf-8", ...headers } });
}

/** 303 so a POST is followed by a GET. */
export function redirect(location: string, headers: Record<string, string> = {}): Response {
  return new Response(null, { status: 303, headers: { location, ...headers } });
}

/** Where to go after login: only a path inside /admin, never another origin. */
export function safeNext(next: string | undefined): string {
  return next && /^\/admin\/[^/\\]/.test(next) && !/[\r\n]/.test(next) ? next : "/admin/keys";
}

/** One text field of a parsed form body (the first value if it was sent twice). */
export function field(body: unknown, name: string): string | undefined {
  if (!body || typeof body !== "object") return undefined;
  const v = (body as Record<string, unknown>)[name];
  const first = Array.isArray(v) ? v[0] : v;
  return typeof first === "string" ? first : undefined;
}

/** The query string as a plain object, empty values dropped (an empty filter box means no filter). */
export function queryFilters(request: Request): Record<string, string> {
  const q = request.url.indexOf("?");
  if (q < 0) return {};
  const out: Record<string, string> = {};
  for (const [k, v] of new URLSearchParams(request.url.slice(q + 1))) if (v.trim() !== "") out[k] = v.trim();
  return out;
}

/** Admin forms are a few text boxes: anything bigger is refused before it is read or parsed. */
export const ADMIN_MAX_BODY_BYTES = 64 * 1024;

export class AdminBodyTooLarge extends Error {}

/**
 * Reads an admin form body (urlencoded, as the pages and htmx send it) with a
 * byte limit enforced while streaming, so neither a false Content-Length nor a
 * chunked body makes us hold more than the limit. Other content types are not
 * parsed at all: the routes then see no fields and refuse as for an empty form.
 */
export async function readAdminForm(request: Request, maxBytes = ADMIN_MAX_BODY_BYTES): Promise<Record<string, string | string[]>> {
  const declared = Number(request.headers.get("content-length") ?? 0);
  if (declared > maxBytes) throw new AdminBodyTooLarge();
  const chunks: Uint8Array[] = [];
  let size = 0;
  if (request.body) {
    const reader = request.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      size += value.byteLength;
      if (size > maxBytes) {
        await reader.cancel();
        throw new AdminBodyTooLarge();
      }
      chunks.push(value);
    }
  }
  const type = (request.headers.get("content-type") ?? "").toLowerCase();
  if (!type.startsWith("application/x-www-form-urlencoded")) return {};
  const out: Record<string, string | string[]> = {};
  for (const [k, v] of new URLSearchParams(Buffer.concat(chunks).toString("utf8"))) {
    const prev = out[k];
    out[k] = prev === undefined ? v : Array.isArray(prev) ? [...prev, v] : [prev, v];
  }
  return out;
}
