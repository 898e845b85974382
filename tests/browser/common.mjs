// Shared by the browser drivers: how they start Chromium, and waiting on a condition instead of sleeping.
import { chromium } from 'playwright-core';

/**
 * Headless Debian Chromium (CHROMIUM overrides the path) with the flags every driver needs: no sandbox, GPU,
 * QUIC or background traffic, WebRTC over loopback; `extraArgs` are the driver's own. Playwright gives every
 * launch a fresh temporary profile (no --user-data-dir needed).
 */
export function launchChromium(extraArgs) {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--allow-loopback-in-peer-connection',
      ...extraArgs,
    ],
  });
}

/**
 * Call `fn` every `intervalMs` until it returns an object with `done` truthy (returned), or throw naming `what`
 * and the last value after `timeoutMs`.
 */
export async function waitFor(what, timeoutMs, fn, intervalMs = 250) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    last = await fn();
    if (last && last.done) return last;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
  throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}; last: ${JSON.stringify(last)}`);
}
