// Shared by the browser drivers: wait on a condition instead of sleeping.

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
