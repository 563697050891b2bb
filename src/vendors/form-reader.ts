/**
 * A strict reader of application/x-www-form-urlencoded bodies, as Stripe's and
 * Twilio's servers read them. It yields the single meaning the vendor will see,
 * or a sentence saying what is ambiguous; it never guesses.
 *
 * Stripe's v1 API parses form bodies with Rack (rack/rack,
 * lib/rack/query_parser.rb, `parse_nested_query` and `normalize_params`):
 * - pairs are split on `DEFAULT_SEP`, the regexp `[&] *` in Rack 3 and `[&;] *` in Rack 2 —
 *   so a `;` may or may not separate pairs, and spaces after a separator are dropped;
 * - each pair is split at its first `=` and both halves are unescaped (`+` is a space,
 *   `%XX` a byte); a pair without `=` sets the key to nil;
 * - a repeated key keeps its LAST value (`params[k] = v`); `k[]` appends to an array;
 * - key names are normalised by the regexp `\A[\[\]]*([^\[\]]+)\]*`: leading brackets and
 *   trailing `]` are stripped (`[amount]` and `amount]` both mean `amount`), and a key
 *   used both as a value and as a hash or array is a ParameterTypeError or overwritten
 *   depending on order.
 * Rather than reproduce every one of those corners, this reader accepts only bodies on
 * which every one of them agrees, and refuses the rest: no raw `;`, space or control
 * character, no pair without `=`, no empty pair, only well-formed percent escapes that
 * decode to UTF-8, key names of the plain form `name[part][part]…`, no key given twice
 * (except `name[]` arrays), and no key used both as a value and as a container. What it
 * accepts means the same to Rack 2, Rack 3 and to URLSearchParams, so the body re-encoded
 * from the pairs (see `encodeForm`) is exactly what was priced.
 */

export type FormRead = { ok: true; pairs: [string, string][] } | { ok: false; message: string };

export interface FormOptions {
  /** Key names as the vendor's parser sees them: Stripe's bracketed names, or Twilio's flat ones. */
  keys: "nested" | "flat";
  /** Keys that may legitimately repeat (Twilio `MediaUrl`); `name[]` keys always may. */
  repeatable?: ReadonlySet<string>;
  /** Twilio's parameter names are matched case-insensitively by this reader, to be safe. */
  caseInsensitive?: boolean;
}

const NESTED_KEY = /^[A-Za-z0-9_]+(\[[^\[\]]*\])*$/;
const FLAT_KEY = /^[A-Za-z0-9_.]+$/;
// Characters that may appear raw: the form-urlencoded unreserved set, separators, escapes, brackets.
const RAW_ALLOWED = /^[A-Za-z0-9\-._~*!'()%+=&\[\]:@/?$,]*$/;

const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

function unescape(s: string): string | null {
  if (!s.includes("%") && !s.includes("+")) return s; // nothing escaped: the text is already what it means (checked raw ASCII)
  const bytes: number[] = [];
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 0x25 /* % */) {
      const hex = s.slice(i + 1, i + 3);
      if (!/^[0-9A-Fa-f]{2}$/.test(hex)) return null;
      bytes.push(parseInt(hex, 16));
      i += 2;
    } else if (c === 0x2b /* + */) {
      bytes.push(0x20);
    } else {
      bytes.push(c);
    }
  }
  try {
    return utf8.decode(new Uint8Array(bytes));
  } catch {
    return null;
  }
}

export function readForm(body: Uint8Array, opts: FormOptions): FormRead {
  if (body.byteLength === 0) return { ok: true, pairs: [] };
  let text: string;
  try {
    text = utf8.decode(body);
  } catch {
    return { ok: false, message: "The form body is not valid UTF-8." };
  }
  if (!RAW_ALLOWED.test(text)) {
    const bad = [...text].find((ch) => !RAW_ALLOWED.test(ch))!;
    return { ok: false, message: `The form body holds a raw ${JSON.stringify(bad)}; percent-encode it (a raw ";" or space is read differently by different form parsers).` };
  }
  const pairs: [string, string][] = [];
  const seen = new Set<string>();
  const leaves = new Set<string>();
  const containers = new Set<string>();
  for (const part of text.split("&")) {
    if (part === "") return { ok: false, message: "The form body has an empty pair (\"&&\" or a leading or trailing \"&\")." };
    const eq = part.indexOf("=");
    if (eq < 0) return { ok: false, message: `The form pair "${part.slice(0, 40)}" has no "=".` };
    const key = unescape(part.slice(0, eq));
    const value = unescape(part.slice(eq + 1));
    if (key === null || value === null) return { ok: false, message: `The form pair "${part.slice(0, 40)}" has a malformed percent-escape or is not UTF-8.` };
    const pattern = opts.keys === "nested" ? NESTED_KEY : FLAT_KEY;
    if (!pattern.test(key)) return { ok: false, message: `The form key ${JSON.stringify(key.slice(0, 40))} is not of the form ${opts.keys === "nested" ? "name[part]…" : "Name"}.` };
    const id = opts.caseInsensitive ? key.toLowerCase() : key;
    const isArray = key.endsWith("[]");
    if (seen.has(id) && !isArray && !opts.repeatable?.has(id)) {
      return { ok: false, message: `The parameter "${key}" is given more than once; give it once.` };
    }
    seen.add(id);
    if (opts.keys === "nested") {
      // a[b][c] is a leaf at "a[b][c]" inside containers "a" and "a[b]"; one name may not be both.
      const parts = id.split("[");
      let path = parts[0]!;
      for (let i = 1; i < parts.length; i++) {
        containers.add(path);
        if (leaves.has(path)) return { ok: false, message: `The parameter "${path}" is given both as a value and as a list or hash.` };
        path += "[" + parts[i];
      }
      if (!isArray) {
        if (containers.has(path)) return { ok: false, message: `The parameter "${path}" is given both as a value and as a list or hash.` };
        leaves.add(path);
      } else containers.add(path.slice(0, -2));
    }
    pairs.push([key, value]);
  }
  return { ok: true, pairs };
}

/** What encodeURIComponent leaves as it is, minus the characters encodePart escapes anyway. */
const NEEDS_NO_ESCAPE = /^[A-Za-z0-9\-_.~]*$/;
const NEEDS_NO_ESCAPE_KEY = /^[A-Za-z0-9\-_.~\[\]]*$/;
const utf8Out = new TextEncoder();

/** Percent-encodes a form key or value; brackets stay raw in keys, as stripe-node sends them. */
function encodePart(s: string, brackets: boolean): string {
  if ((brackets ? NEEDS_NO_ESCAPE_KEY : NEEDS_NO_ESCAPE).test(s)) return s; // most keys and values: no escape to make
  const e = encodeURIComponent(s).replace(/[!'()*]/g, (c) => "%" + c.charCodeAt(0).toString(16).toUpperCase());
  return brackets ? e.replace(/%5B/g, "[").replace(/%5D/g, "]") : e;
}

/** The canonical body of exactly these pairs: what is priced is what is forwarded. */
export function encodeForm(pairs: readonly [string, string][]): Uint8Array {
  return utf8Out.encode(pairs.map(([k, v]) => `${encodePart(k, true)}=${encodePart(v, false)}`).join("&"));
}

/** The single value of a scalar parameter, or undefined when absent. */
export function formValue(pairs: readonly [string, string][], key: string, caseInsensitive = false): string | undefined {
  const want = caseInsensitive ? key.toLowerCase() : key;
  for (const [k, v] of pairs) if ((caseInsensitive ? k.toLowerCase() : k) === want) return v;
  return undefined;
}

export function formValues(pairs: readonly [string, string][], key: string, caseInsensitive = false): string[] {
  const want = caseInsensitive ? key.toLowerCase() : key;
  return pairs.filter(([k]) => (caseInsensitive ? k.toLowerCase() : k) === want).map(([, v]) => v);
}
