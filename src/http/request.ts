import { ApiError } from "../errors.ts";

/** The management token from `Authorization: Bearer …`. */
export function bearerToken(request: Request): string | null {
  const auth = request.headers.get("authorization");
  if (!auth || !/^bearer /i.test(auth)) return null;
  return auth.slice(7).trim() || null;
}

/** Reads a JSON body with a size limit; every failure is a clear ApiError. */
export async function readJson(request: Request, maxBytes: number): Promise<unknown> {
  const declared = Number(request.headers.get("content-length") ?? 0);
  if (declared > maxBytes) throw new ApiError("payload_too_large", `Request body is larger than ${maxBytes} bytes.`);
  const type = request.headers.get("content-type") ?? "";
  if (!type.toLowerCase().includes("application/json")) {
    throw new ApiError("unsupported_media_type", "Send the body as JSON with Content-Type: application/json.");
  }
  const text = await request.text();
  if (Buffer.byteLength(text) > maxBytes) throw new ApiError("payload_too_large", `Request body is larger than ${maxBytes} bytes.`);
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new ApiError("invalid_json", `Body is not valid JSON: ${(e as Error).message}`);
  }
}

/** The query string as a plain object (last value wins). */
export function queryObject(request: Request): Record<string, string> {
  const url = request.url;
  const q = url.indexOf("?");
  return q < 0 ? {} : Object.fromEntries(new URLSearchParams(url.slice(q + 1)));
}
