/** Hop-by-hop headers (RFC 9110 §7.6.1) never cross the proxy, in either direction. */
const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-authenticate",
  "proxy-authorization",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
]);

/** Request headers that are ours or the client's, not the vendor's business. */
const NOT_FORWARDED_UP = new Set(["host", "authorization", "content-length", "cookie", "accept-encoding", "expect"]);
/** Response headers Bun recomputes: the body we send is already decoded. */
const NOT_FORWARDED_DOWN = new Set(["content-length", "content-encoding", "set-cookie"]);

/**
 * Removes, in place, every header that must not cross: the request's and the vendor's headers are
 * forwarded as the same objects (no copy per call). Header names iterate lower-cased.
 */
function keepEndToEnd(h: Headers, drop: Set<string>): Headers {
  const connection = h.get("connection");
  const named = connection === null ? null : new Set(connection.split(",").map((t) => t.trim().toLowerCase()));
  const gone: string[] = [];
  for (const name of h.keys()) {
    if (HOP_BY_HOP.has(name) || drop.has(name) || named?.has(name) || name.startsWith("x-keybrake-")) gone.push(name);
  }
  for (const name of gone) h.delete(name);
  return h;
}

/** The request's own headers, made fit to forward (in place: read what you need from them first). */
export const toUpstreamHeaders = (h: Headers) => keepEndToEnd(h, NOT_FORWARDED_UP);
/** The vendor's answer's own headers, made fit to return (in place). */
export const toDownstreamHeaders = (h: Headers) => keepEndToEnd(h, NOT_FORWARDED_DOWN);

/** The vault key from wherever the vendor's SDK puts its secret: Bearer, or either half of Basic auth. */
export function readVaultKey(headers: Headers, prefix: string): string | null {
  const auth = headers.get("authorization");
  if (!auth) return null;
  const space = auth.indexOf(" ");
  const scheme = auth.slice(0, space).toLowerCase();
  const value = auth.slice(space + 1).trim();
  if (scheme === "bearer") return value || null;
  if (scheme !== "basic") return null;
  let decoded: string;
  try {
    decoded = atob(value);
  } catch {
    return null;
  }
  const colon = decoded.indexOf(":");
  const user = colon < 0 ? decoded : decoded.slice(0, colon);
  const pass = colon < 0 ? "" : decoded.slice(colon + 1);
  // Stripe puts the key in the user name; Twilio in the password (its user name must look like an Account SID).
  if (pass.startsWith(prefix)) return pass;
  if (user.startsWith(prefix)) return user;
  return pass || user || null;
}
