import { resend } from "./resend.ts";
import { stripe } from "./stripe.ts";
import { twilio } from "./twilio.ts";
import type { VendorAdapter, VendorName } from "./types.ts";

/** The one place vendors are registered: adding one is a file and a line here. */
export const ADAPTERS: Readonly<Record<VendorName, VendorAdapter>> = { stripe, twilio, resend };

/** The vendor whose SDK sends this path, for requests that arrive without a /{vendor} prefix. */
export function vendorForPath(path: string): VendorName | null {
  for (const a of Object.values(ADAPTERS)) {
    if (a.ownPathPrefixes.some((p) => path.startsWith(p))) return a.name;
  }
  return null;
}
