/**
 * A strict JSON reader for Resend's bodies. JSON.parse keeps the last of two
 * equal keys, other parsers keep the first or refuse: a body whose meaning
 * depends on that choice is refused. So are a byte-order mark, invalid UTF-8
 * and anything JSON.parse itself rejects (RFC 8259 §4: "The names within an
 * object SHOULD be unique" — where they are not, behaviour is unpredictable).
 */

export type JsonRead = { ok: true; value: unknown } | { ok: false; message: string };

const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

export function readJson(body: Uint8Array): JsonRead {
  let text: string;
  try {
    text = utf8.decode(body);
  } catch {
    return { ok: false, message: "The JSON body is not valid UTF-8." };
  }
  let value: unknown;
  try {
    value = JSON.parse(text); // a BOM is kept by the decoder above, and JSON.parse refuses it
  } catch {
    return { ok: false, message: "The body is not valid JSON." };
  }
  const dup = duplicateKey(text);
  if (dup !== null) return { ok: false, message: `The JSON key "${dup.slice(0, 40)}" appears twice in one object (or differs from another only by case); give it once.` };
  return { ok: true, value };
}

/**
 * Scans already-valid JSON for an object holding one name twice. Names are compared
 * case-insensitively, so "to" and "To" in one object are refused too: whether the
 * vendor folds case is not documented.
 */
function duplicateKey(text: string): string | null {
  const stack: (Set<string> | null)[] = [];
  let expectKey = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (c === "{") {
      stack.push(new Set());
      expectKey = true;
    } else if (c === "[") {
      stack.push(null);
      expectKey = false;
    } else if (c === "}" || c === "]") {
      stack.pop();
      expectKey = false;
    } else if (c === ",") {
      expectKey = stack[stack.length - 1] != null;
    } else if (c === '"') {
      let j = i + 1;
      while (text[j] !== '"') j += text[j] === "\\" ? 2 : 1;
      if (expectKey) {
        const name = (JSON.parse(text.slice(i, j + 1)) as string).toLowerCase();
        const keys = stack[stack.length - 1]!;
        if (keys.has(name)) return name;
        keys.add(name);
        expectKey = false;
      }
      i = j;
    }
  }
  return null;
}
