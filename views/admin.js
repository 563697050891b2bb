// Keybrake admin pages: the little behaviour htmx does not cover.
// Served from the binary as a file because the CSP allows no inline script.
(() => {
  "use strict";

  async function copyFrom(button) {
    const input = document.getElementById(button.dataset.copy);
    if (!input) return;
    let copied = false;
    try {
      await navigator.clipboard.writeText(input.value);
      copied = true;
    } catch {
      // No clipboard permission (or not a secure context): fall back to a selection.
      input.focus();
      input.select();
      copied = document.execCommand && document.execCommand("copy");
    }
    button.textContent = copied ? "Copied" : "Press Ctrl+C to copy";
    setTimeout(() => (button.textContent = "Copy"), 2500);
  }

  document.addEventListener("click", (event) => {
    const target = event.target instanceof Element ? event.target : null;
    const copy = target?.closest("[data-copy]");
    if (copy) return void copyFrom(copy);
    const clear = target?.closest("[data-clear]");
    if (clear) document.getElementById(clear.dataset.clear)?.replaceChildren();
  });

  // A read-only secret is easier to copy by hand when one click selects all of it.
  document.addEventListener("focusin", (event) => {
    if (event.target instanceof HTMLInputElement && event.target.readOnly) event.target.select();
  });

  // New content that asks for it (an issued key, an audit row's detail) gets focus once,
  // so keyboard and screen-reader users land on it; polling swaps never move focus.
  document.addEventListener("htmx:after:swap", () => {
    const el = document.querySelector("[data-autofocus]");
    if (!el) return;
    el.removeAttribute("data-autofocus");
    el.focus({ preventScroll: false });
  });
})();
