import { encodeForm, readForm, type FormOptions } from "./form-reader.ts";
import { readJson } from "./json-reader.ts";
import { READ_METHODS } from "./rules.ts";
import type { RawRequest, WireRead } from "./types.ts";

/**
 * The checks every vendor shares before its own body reader runs: a write carries
 * no query string (Stripe reads query parameters on a POST as if they were in the
 * body), only identity Content-Encoding, and only the vendor's own content type;
 * a read carries no body. Anything else could mean something to the vendor that
 * Keybrake did not price, so it is refused (SPEC §3).
 */
export function readWire(req: RawRequest, format: { type: "form"; options: FormOptions } | { type: "json" }): WireRead {
  const empty = req.body.byteLength === 0;
  if (READ_METHODS.has(req.method)) {
    if (!empty) return { ok: false, message: `A ${req.method} request must not carry a body.` };
    return { ok: true, body: req.body, form: [], json: undefined };
  }
  if (req.query !== "" && req.query !== "?") {
    return { ok: false, message: "A write must not carry a query string; send every parameter in the body." };
  }
  const encoding = req.contentEncoding.trim().toLowerCase();
  if (encoding !== "" && encoding !== "identity") {
    return { ok: false, message: `Content-Encoding "${req.contentEncoding.slice(0, 40)}" is not accepted; send the body uncompressed.` };
  }
  if (empty) return { ok: true, body: req.body, form: [], json: undefined };
  const want = format.type === "form" ? "application/x-www-form-urlencoded" : "application/json";
  const [type, ...params] = req.contentType.split(";").map((p) => p.trim().toLowerCase());
  const charsetOk = params.every((p) => p === "" || p === "charset=utf-8" || p === 'charset="utf-8"');
  if (type !== want || !charsetOk) {
    return { ok: false, message: `Content-Type must be ${want} (optionally with charset=utf-8), not "${req.contentType.slice(0, 60)}".` };
  }
  if (format.type === "json") {
    const j = readJson(req.body);
    return j.ok ? { ok: true, body: req.body, form: [], json: j.value } : j;
  }
  const f = readForm(req.body, format.options);
  // Forwarded re-encoded from exactly the pairs that were priced.
  return f.ok ? { ok: true, body: encodeForm(f.pairs), form: f.pairs, json: undefined } : f;
}
