// Drives Debian's Chromium through the read-only viewer page (/view/{id}) of a session that a test publisher is
// streaming; prints one JSON result line.
//
//   node drive_viewer.mjs <server-url> <session-id> <out-dir>
//
// The server requires the bearer token in $LIPAR_TEST_TOKEN. Steps: (1) /view/<unknown id>#token=… says the session
// does not exist; (2) /view/<id> without a token says a token is needed; (3) /view/<id>#token=… at 1280×720 (an OBS
// browser source's size): the video plays (frames counted with requestVideoFrameCallback, videoWidth > 0), the token
// is gone from the address bar, a screenshot as OBS would show it (viewer.png); (4) a second viewer page plays at the
// same time; (5) a third one is over the limit (LIPAR_VIEWERS_PER_SESSION=2): it says so, retries by itself and plays
// once the second closes; (6) the session is deleted: the page says the session has ended. Every Content-Security-Policy
// violation and unexpected console error goes into the result.
import path from 'node:path';
import { launchChromium, waitFor } from './common.mjs';

const [url, sessionId, outDir] = process.argv.slice(2);
const TOKEN = process.env.LIPAR_TEST_TOKEN || '';
const MIN_FRAMES = Number(process.env.MIN_FRAMES || 30);
// The 401/404/429 answers of steps 1, 2 and 5 are logged by Chromium as failed resource loads.
const EXPECTED_CONSOLE = /Failed to load resource: the server responded with a status of (401|404|429)/;
const t0 = Date.now();
const result = { ok: false, steps: {}, console_errors: [], page_errors: [], csp_violations: [] };
const mark = (name, extra = {}) => {
  result.steps[name] = { t_s: (Date.now() - t0) / 1000, ...extra };
};


const viewerState = (p) =>
  p.evaluate(() => {
    const v = document.getElementById('video');
    return {
      ...window.liparViewer,
      videoWidth: v.videoWidth,
      videoHeight: v.videoHeight,
      paused: v.paused,
      messageShown: !document.getElementById('message').hidden,
      href: location.href,
    };
  });

let browser;
try {
  browser = await launchChromium([
    // A page without camera permission (this one) offers its host candidates as mDNS .local names, which the
    // server resolves by multicast DNS on a real network; the test's network namespace has only loopback and no
    // multicast, so the browser offers the loopback address itself here.
    '--disable-features=WebRtcHideLocalIpsWithMdns',
  ]);
  result.browser_version = browser.version();
  // 1280×720: the size of a typical OBS browser source. No autoplay flag: the page must play muted on its own.
  const context = await browser.newContext({ viewport: { width: 1280, height: 720 } });
  await context.exposeFunction('__reportCsp', (v) => result.csp_violations.push(v));
  await context.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) =>
      window.__reportCsp(`${e.effectiveDirective} blocked ${e.blockedURI || 'inline'} (${e.sourceFile}:${e.lineNumber})`),
    );
  });
  const open = async (tag, address) => {
    const p = await context.newPage();
    p.on('console', (msg) => {
      if (msg.type() === 'error' && !EXPECTED_CONSOLE.test(msg.text())) result.console_errors.push(`${tag}: ${msg.text()}`);
    });
    p.on('pageerror', (err) => result.page_errors.push(`${tag}: ${err}`));
    await p.goto(address);
    return p;
  };

  // 1. An unknown session: one clear line, and the page stops trying.
  const unknown = await open('unknown', `${url}/view/no-such-session#token=${TOKEN}`);
  result.unknown = await waitFor('the no-such-session message', 15000, async () => {
    const s = await viewerState(unknown);
    return { done: s.state === 'stopped' && /No such session/.test(s.message), ...s };
  });
  await unknown.close();
  mark('unknown_session_shown');

  // 2. No token on a server that requires one (a fresh context: no token kept in sessionStorage).
  const bare = await browser.newContext({ viewport: { width: 1280, height: 720 } });
  const noToken = await bare.newPage();
  await noToken.goto(`${url}/view/${sessionId}`);
  result.no_token = await waitFor('the token-needed message', 15000, async () => {
    const s = await viewerState(noToken);
    return { done: s.state === 'stopped' && /access token/.test(s.message), ...s };
  });
  await bare.close();
  mark('token_needed_shown');

  // 3. The session's viewer as OBS shows it.
  const page = await open('viewer', `${url}/view/${sessionId}#token=${TOKEN}`);
  result.playing = await waitFor(`${MIN_FRAMES} frames shown`, 90000, async () => {
    const s = await viewerState(page);
    return { done: s.frames >= MIN_FRAMES && s.videoWidth > 0 && !s.paused && s.state === 'playing', ...s };
  });
  mark('playing');
  result.token_left_address_bar = !(await page.evaluate(() => location.href)).includes('token');
  result.layout = await page.evaluate(() => {
    const r = document.getElementById('video').getBoundingClientRect();
    return {
      video: { x: r.x, y: r.y, width: r.width, height: r.height },
      window: { width: innerWidth, height: innerHeight },
      background: getComputedStyle(document.body).backgroundColor,
      controls: document.getElementById('video').controls,
      muted: document.getElementById('video').muted,
      scrollable: document.documentElement.scrollHeight > innerHeight,
    };
  });
  await page.screenshot({ path: path.join(outDir, 'viewer.png') });
  mark('screenshot');

  // 4. A second viewer at the same time: both keep playing.
  const second = await open('second', `${url}/view/${sessionId}#token=${TOKEN}`);
  const before = (await viewerState(page)).frames;
  result.second = await waitFor('the second viewer to play too', 60000, async () => {
    const s = await viewerState(second);
    return { done: s.frames >= 10 && s.videoWidth > 0, ...s };
  });
  result.first_kept_playing = (await viewerState(page)).frames > before;
  mark('two_viewers');

  // 5. A third viewer is over the server's limit (LIPAR_VIEWERS_PER_SESSION=2): the page says so and retries by
  // itself; once the second viewer's page closes, the third one's retry connects and plays.
  const third = await open('third', `${url}/view/${sessionId}#token=${TOKEN}`);
  result.over_limit = await waitFor('the viewer-limit message', 30000, async () => {
    const s = await viewerState(third);
    return { done: s.state === 'waiting' && /LIPAR_VIEWERS_PER_SESSION/.test(s.message), ...s };
  });
  await second.close();
  result.third = await waitFor('the third viewer to play once a place is free', 90000, async () => {
    const s = await viewerState(third);
    return { done: s.frames >= 10 && s.state === 'playing', ...s };
  });
  mark('retry_after_limit');

  // 6. The session ends: the page says so (the server closes the viewers; the page looks the session up again).
  const res = await fetch(`${url}/v1/sessions/${sessionId}`, {
    method: 'DELETE',
    headers: { Authorization: `Bearer ${TOKEN}` },
  });
  if (res.status !== 204) throw new Error(`DELETE: HTTP ${res.status}`);
  result.ended = await waitFor('the session-ended message', 45000, async () => {
    const s = await viewerState(page);
    return { done: s.state === 'stopped' && /ended|No such session/.test(s.message), ...s };
  });
  mark('ended_shown');
  result.ok = true;
} catch (e) {
  result.error = String(e && e.stack ? e.stack : e);
} finally {
  if (browser) await browser.close();
  result.t_total_s = (Date.now() - t0) / 1000;
  console.log(JSON.stringify(result));
}
