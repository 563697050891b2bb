/**
 * Endpoint allowlists ("POST /v1/payment_intents", "GET /v1/customers/*") and
 * the path normalisation the proxy forwards. A path is matched in exactly the
 * form it is forwarded in, so no encoding trick can reach the vendor as one
 * endpoint while being checked as another.
 */
const METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "*"] as const;

export interface EndpointRule {
  method: string;
  segments: string[];
}

/** Parses one allowlist entry; a string saying what is wrong if it is not one. */
export function parseEndpointRule(entry: string): EndpointRule | string {
  const m = /^([A-Za-z*]+) (\/\S*)$/.exec(entry.trim());
  if (!m) return `"${entry}" is not "METHOD /path"`;
  const method = m[1]!.toUpperCase();
  if (!(METHODS as readonly string[]).includes(method)) return `"${m[1]}" is not an HTTP method or *`;
  const segments = splitPath(m[2]!);
  if (typeof segments === "string") return `"${entry}": ${segments}`;
  for (const s of segments) {
    if (s.includes("*") && s !== "*") return `"${entry}": * must be a whole path segment`;
  }
  return { method, segments };
}

export function ruleMatches(rule: EndpointRule, method: string, segments: readonly string[]): boolean {
  if (rule.method !== "*" && rule.method !== method) return false;
  if (rule.segments.length !== segments.length) return false;
  for (let i = 0; i < segments.length; i++) {
    const want = rule.segments[i]!;
    if (want !== "*" && want !== segments[i]) return false;
  }
  return true;
}

export function compileAllowlist(entries: readonly string[]): EndpointRule[] {
  return entries.map((e) => {
    const rule = parseEndpointRule(e);
    if (typeof rule === "string") throw new Error(rule);
    return rule;
  });
}

export function isAllowed(rules: readonly EndpointRule[], method: string, segments: readonly string[]): boolean {
  return rules.some((r) => ruleMatches(r, method, segments));
}

/**
 * Decodes a raw URL path into segments, refusing anything ambiguous: empty
 * segments (`//`, trailing `/`), `.`/`..` (also as %2e), encoded or literal
 * slashes and backslashes, `;` parameters, control characters and bad escapes.
 */
export function splitPath(rawPath: string): string[] | string {
  if (!rawPath.startsWith("/")) return "path must start with /";
  if (rawPath === "/") return [];
  const parts = rawPath.slice(1).split("/");
  const out: string[] = [];
  for (const part of parts) {
    if (part === "") return "empty path segment (// or trailing /)";
    let seg: string;
    try {
      seg = decodeURIComponent(part);
    } catch {
      return "malformed percent-encoding";
    }
    if (seg === "." || seg === "..") return "dot segments are not allowed";
    if (/[/\\;\u0000-\u001f\u007f]/.test(seg)) return "encoded slash, backslash, ; or control character in a segment";
    out.push(seg);
  }
  return out;
}

/** The canonical form forwarded upstream: each decoded segment re-encoded. */
export function joinPath(segments: readonly string[]): string {
  return "/" + segments.map(encodeSegment).join("/");
}

function encodeSegment(s: string): string {
  // Keep the characters vendors use in ids and paths readable (":" "@" "." "-" "_" "~").
  return encodeURIComponent(s).replace(/%3A/g, ":").replace(/%40/g, "@");
}
