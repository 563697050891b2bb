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
    const remove = target?.closest("[data-remove]");
    if (remove) {
      const row = document.getElementById(remove.dataset.remove);
      const opener = document.querySelector(`[data-detail-toggle="${remove.dataset.remove}"]`);
      row?.remove();
      opener?.setAttribute("aria-expanded", "false");
      opener?.focus();
    }
    const timeToggle = target?.closest("[data-time-toggle]");
    if (timeToggle) {
      localStorage.setItem(TIME_KEY, localTimes() ? "utc" : "local");
      applyTimes();
    }
  });

  // An audit row's Details opens under the row; a second click closes it instead of adding another.
  // Capture phase, so it runs before htmx sees the click.
  document.addEventListener(
    "click",
    (event) => {
      const target = event.target instanceof Element ? event.target : null;
      const toggle = target?.closest("[data-detail-toggle]");
      if (!toggle) return;
      const open = document.getElementById(toggle.dataset.detailToggle);
      if (open) {
        event.preventDefault();
        event.stopPropagation();
        open.remove();
        toggle.setAttribute("aria-expanded", "false");
      } else {
        toggle.setAttribute("aria-expanded", "true");
      }
    },
    true,
  );

  // Times are written in UTC by the server; the operator may prefer this browser's zone.
  const TIME_KEY = "keybrake.times";
  const localTimes = () => localStorage.getItem(TIME_KEY) === "local";
  const pad = (n) => String(n).padStart(2, "0");
  function localText(d, withZone = true) {
    const zone = new Intl.DateTimeFormat(undefined, { timeZoneName: "short" }).formatToParts(d).find((p) => p.type === "timeZoneName")?.value ?? "";
    const text = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    return withZone ? `${text} ${zone}` : text;
  }
  function applyTimes() {
    const local = localTimes();
    for (const el of document.querySelectorAll("time[data-time]")) {
      const d = new Date(el.getAttribute("datetime"));
      if (Number.isNaN(d.getTime())) continue;
      if (!el.dataset.utc) el.dataset.utc = el.title;
      if (!el.dataset.utcText) el.dataset.utcText = el.textContent;
      el.title = local ? localText(d) : el.dataset.utc;
      if (el.dataset.time === "full") el.textContent = el.title;
      // Compact times (the audit list) drop the zone; the column header and the title say it.
      if (el.dataset.time === "compact") el.textContent = local ? localText(d, false).slice(5) : el.dataset.utcText;
    }
    for (const th of document.querySelectorAll("[data-zone-label]")) th.textContent = local ? "Time (local)" : "Time (UTC)";
    for (const b of document.querySelectorAll("[data-time-toggle]")) {
      b.textContent = local ? "Times: local" : "Times: UTC";
      b.setAttribute("aria-pressed", String(local));
    }
  }
  document.addEventListener("DOMContentLoaded", applyTimes);

  // The flash toast fades after a while; it never moved anything, so nothing moves back.
  let flashTimer;
  function scheduleFlashClear() {
    const flash = document.getElementById("flash");
    if (!flash || !flash.childElementCount) return;
    clearTimeout(flashTimer);
    flashTimer = setTimeout(() => flash.replaceChildren(), 12000);
  }

  // A read-only secret is easier to copy by hand when one click selects all of it.
  document.addEventListener("focusin", (event) => {
    if (event.target instanceof HTMLInputElement && event.target.readOnly) event.target.select();
  });

  // New content that asks for it (an issued key, an audit row's detail) gets focus once,
  // so keyboard and screen-reader users land on it; polling swaps never move focus.
  document.addEventListener("htmx:after:swap", () => {
    applyTimes();
    scheduleFlashClear();
    const el = document.querySelector("[data-autofocus]");
    if (!el) return;
    el.removeAttribute("data-autofocus");
    el.focus({ preventScroll: false });
  });
})();
