/**
 * Debian's Chromium for the admin-page tests, launched headless with the flags this machine needs
 * (no sandbox as root; no background networking, whose connections the closed network refuses).
 */
import { existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium, type Browser } from "playwright-core";

export const CHROMIUM = "/usr/bin/chromium";
/** Screenshots go here (kept out of git). */
export const ARTIFACTS = join(import.meta.dir, "..", "test-artifacts");
export const WAIT = { timeout: 10_000 };

export async function launchChromium(): Promise<Browser> {
  if (!existsSync(CHROMIUM)) throw new Error(`the admin page tests need Chromium at ${CHROMIUM}: apt-get update && apt-get install -y --no-install-recommends chromium`);
  mkdirSync(ARTIFACTS, { recursive: true });
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
}
