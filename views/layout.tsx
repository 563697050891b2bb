import type { PropsWithChildren } from "@kitajs/html";
import { assetHref } from "./assets.ts";

export type Section = "keys" | "audit" | "spend" | "vendors" | "tokens" | "budgets" | "webhooks" | "events";

const NAV: { section: Section; href: string; label: string }[] = [
  { section: "keys", href: "/admin/keys", label: "Keys" },
  { section: "audit", href: "/admin/audit", label: "Audit log" },
  { section: "spend", href: "/admin/spend", label: "Spend" },
  { section: "vendors", href: "/admin/vendors", label: "Vendors" },
  { section: "tokens", href: "/admin/tokens", label: "Tokens" },
  { section: "budgets", href: "/admin/budgets", label: "Budgets" },
  { section: "webhooks", href: "/admin/webhooks", label: "Webhooks" },
  { section: "events", href: "/admin/events", label: "Events" },
];

/** Shared <head>: our stylesheet and scripts only, and htmx told not to inject styles (CSP allows no inline style). */
function Head({ title }: { title: string }) {
  return (
    <head>
      <meta charset="utf-8" />
      <meta name="viewport" content="width=device-width, initial-scale=1" />
      <meta name="htmx-config" content='{"includeIndicatorCSS":false}' />
      <meta name="referrer" content="same-origin" />
      <title safe>{`${title} · Keybrake`}</title>
      <link rel="icon" href={assetHref("favicon.svg")} type="image/svg+xml" />
      <link rel="stylesheet" href={assetHref("admin.css")} />
      <script src={assetHref("htmx.min.js")} defer></script>
      <script src={assetHref("admin.js")} defer></script>
    </head>
  );
}

/** Signed-in pages: navigation, a place for messages, and the CSRF token every htmx request sends. */
export function Layout({ title, section, csrf, children }: PropsWithChildren<{ title: string; section: Section; csrf: string }>) {
  return (
    <html lang="en">
      <Head title={title} />
      <body hx-headers:inherited={JSON.stringify({ "X-CSRF-Token": csrf })}>
        <a class="skip" href="#main">
          Skip to content
        </a>
        <header class="topbar">
          <div class="topbar-inner">
            <a class="brand" href="/admin/keys">
              <span class="brand-mark" aria-hidden="true"></span>Keybrake
            </a>
            <nav aria-label="Admin sections">
              <ul class="nav">
                {NAV.map((n) => (
                  <li>
                    <a href={n.href} aria-current={n.section === section ? "page" : undefined}>
                      {n.label}
                    </a>
                  </li>
                ))}
              </ul>
            </nav>
            <button class="btn ghost small time-toggle" type="button" data-time-toggle aria-pressed="false" title="Show times in UTC or in this browser's time zone (remembered in this browser)">
              Times: UTC
            </button>
            <form class="logout" method="post" action="/admin/logout">
              <CsrfField token={csrf} />
              <button class="btn ghost small" type="submit">
                Log out
              </button>
            </form>
          </div>
        </header>
        <main id="main" class="page">
          {/* A toast, fixed to the corner: messages never push the rows under the pointer. */}
          <div id="flash" class="flash-area" aria-live="polite"></div>
          {children}
        </main>
      </body>
    </html>
  );
}

/** Pages seen before signing in. */
export function BareLayout({ title, children }: PropsWithChildren<{ title: string }>) {
  return (
    <html lang="en">
      <Head title={title} />
      <body class="bare">
        <main id="main" class="page narrow">
          {children}
        </main>
      </body>
    </html>
  );
}

/** Plain (non-htmx) forms carry the CSRF token as a hidden field. */
export function CsrfField({ token }: { token: string }) {
  return <input type="hidden" name="_csrf" value={token} />;
}
