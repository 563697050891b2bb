import { compileAllowlist, isAllowed, type EndpointRule } from "../domain/endpoints.ts";
import type { Pricing, VendorName } from "./types.ts";

/** Compiles "METHOD /path" patterns once, for the adapters' own price tables. */
export const rules = (...entries: string[]): EndpointRule[] => compileAllowlist(entries);

export function matches(list: readonly EndpointRule[], method: string, path: string): boolean {
  return isAllowed(list, method, segmentsOf(path));
}

export function segmentsOf(path: string): string[] {
  return path === "/" ? [] : path.slice(1).split("/").map(decodeURIComponent);
}

/** An operator's fixed price for this endpoint, if the pricing file names one. */
export function fixedPrice(pricing: Pricing, vendor: VendorName, method: string, path: string): number | null {
  const fixed = pricing.fixed[vendor];
  if (fixed.length === 0) return null;
  const segments = segmentsOf(path);
  for (const f of fixed) {
    if (isAllowed([f.rule], method, segments)) return f.micros;
  }
  return null;
}

export const READ_METHODS = new Set(["GET", "HEAD", "OPTIONS"]);
