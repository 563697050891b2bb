import { createHash } from "node:crypto";
import htmx from "htmx.org/dist/htmx.min.js" with { type: "text" };
import script from "./admin.js" with { type: "text" };
import css from "./admin.css" with { type: "text" };
import favicon from "./favicon.svg" with { type: "text" };

/**
 * Static files of the admin pages, embedded in the binary (never a CDN). Their
 * URLs carry a hash of their content, so they can be cached for a year and a
 * new build is still picked up at once.
 */
export const ASSETS = {
  "htmx.min.js": { body: htmx, type: "text/javascript; charset=utf-8" },
  "admin.js": { body: script, type: "text/javascript; charset=utf-8" },
  "admin.css": { body: css, type: "text/css; charset=utf-8" },
  "favicon.svg": { body: favicon, type: "image/svg+xml" },
} as const;
export type AssetName = keyof typeof ASSETS;

const versions = Object.fromEntries(
  Object.entries(ASSETS).map(([name, a]) => [name, createHash("sha256").update(a.body).digest("hex").slice(0, 12)]),
) as Record<AssetName, string>;

export function assetHref(name: AssetName): string {
  return `/admin/assets/${name}?v=${versions[name]}`;
}
