// Drives Debian's Chromium through the web client against a running server; prints one JSON result line.
//
//   node drive_page.mjs <server-url> <fake-webcam.y4m> <out-dir> <first-prompt> <second-prompt>
//
// The server requires the bearer token in $LIPAR_TEST_TOKEN and admits one session. Steps, each on
// /?autostart=1&prompt=...: (1) camera denied → the page explains it; (2) no token → 401 explained, focus
// on the token field; (3) token typed, Start, but another session holds the slot → "server full" and a
// retry countdown; that session is deleted → the page reconnects by itself with the same prompt; (4) more
// than MIN_FRAMES edited frames are decoded (RTCPeerConnection.getStats via window.__lipar.stats());
// (5) the prompt is changed in the page (type + Enter) and the session's stats (REST API) report it
// active; (6) screenshots (desktop); (7) Snapshot → a PNG download, Record → timer (screenshot) → Stop → a webm
// download of REC_S seconds (env, default 30), then a short side-by-side recording; screenshot at 360 px phone
// width; Stop ends the session; (8) a link carrying the
// token in its fragment (#token=...): the page takes it, keeps it in sessionStorage and clears the address bar.
// Every step's time, any unexpected browser console error and every Content-Security-Policy violation (the
// server sends a strict CSP) go into the result.
import path from 'node:path';
import { chromium } from 'playwright-core';

const [url, y4m, outDir, FIRST_PROMPT, SECOND_PROMPT] = process.argv.slice(2);
const MIN_FRAMES = Number(process.env.MIN_FRAMES || 60);
const REC_S = Number(process.env.REC_S || 30); // the length of the recording checked with PyAV
const SBS_S = 4; // the side-by-side recording
const SETTLE_BLOCKS = 4; // more blocks than the server keeps queued for one session
const TOKEN = process.env.LIPAR_TEST_TOKEN || '';
const EXPECTED_CONSOLE = /Failed to load resource: the server responded with a status of (401|503)/;
const t0 = Date.now();
const result = { ok: false, steps: {}, console_errors: [], page_errors: [] };
const mark = (name, extra = {}) => {
  result.steps[name] = { t_s: (Date.now() - t0) / 1000, ...extra };
};

async function waitFor(what, timeoutMs, fn, intervalMs = 250) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    last = await fn();
    if (last && last.done) return last;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
  throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}; last: ${JSON.stringify(last)}`);
}

async function api(method, route, body) {
  const res = await fetch(`${url}${route}`, {
    method,
    headers: { Authorization: `Bearer ${TOKEN}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!res.ok) throw new Error(`${method} ${route}: HTTP ${res.status} ${await res.text()}`);
  return res.status === 204 ? null : res.json();
}

const getSession = (id) => api('GET', `/v1/sessions/${id}`);

let browser;
let page;
try {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    // Playwright gives every launch a fresh temporary profile (no --user-data-dir needed).
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--use-fake-device-for-media-stream',
      '--use-fake-ui-for-media-stream',
      `--use-file-for-fake-video-capture=${y4m}`,
      '--allow-loopback-in-peer-connection',
      '--autoplay-policy=no-user-gesture-required',
    ],
  });
  result.browser_version = browser.version();
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, acceptDownloads: true });
  // Every CSP violation of every page (the server's Content-Security-Policy must fit what the page does).
  result.csp_violations = [];
  await context.exposeFunction('__reportCsp', (v) => result.csp_violations.push(v));
  await context.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) =>
      window.__reportCsp(`${e.effectiveDirective} blocked ${e.blockedURI || 'inline'} (${e.sourceFile}:${e.lineNumber})`),
    );
  });
  const watch = (p, tag) => {
    p.on('console', (msg) => {
      // The expected 401 and 503 answers below are logged by Chromium as failed resource loads.
      if (msg.type() === 'error' && !EXPECTED_CONSOLE.test(msg.text())) {
        result.console_errors.push(`${tag}: ${msg.text()}`);
      }
    });
    p.on('pageerror', (err) => result.page_errors.push(`${tag}: ${err}`));
  };
  const q = new URLSearchParams({ autostart: '1', prompt: FIRST_PROMPT });

  // 1. Camera denied: the person sees why and what to do.
  const denied = await context.newPage();
  watch(denied, 'camera-denied');
  await denied.addInitScript(() => {
    navigator.mediaDevices.getUserMedia = () =>
      Promise.reject(new DOMException('Permission denied', 'NotAllowedError'));
  });
  await denied.goto(`${url}/?${q}`);
  result.camera_denied = await waitFor('the camera-denied message', 10000, async () => {
    const text = await denied.textContent('#error-text');
    return { done: /Camera access was denied/.test(text), text, conn: await denied.textContent('#conn') };
  });
  await denied.close();
  mark('camera_denied_shown');

  // 2. No token on a server that requires one: 401 explained, focus on the token field.
  page = await context.newPage();
  watch(page, 'main');
  await page.goto(`${url}/?${q}`);
  result.unauthorized = await waitFor('the access-token message', 10000, async () => {
    const text = await page.textContent('#error-text');
    const focused = await page.evaluate(() => document.activeElement && document.activeElement.id);
    return { done: /Access token needed/.test(text) && focused === 'token', text, focused };
  });
  mark('unauthorized_shown');

  // 3. Server full: another session holds the only slot; the page says so and retries by itself.
  const blocker = await api('POST', '/v1/sessions', { prompt: 'someone else' });
  await page.fill('#token', TOKEN);
  await page.click('#start');
  result.server_full = await waitFor('the server-full message and a retry countdown', 10000, async () => {
    const text = await page.textContent('#error-text');
    const conn = await page.textContent('#conn');
    return { done: /server is full/.test(text) && /Reconnecting in/.test(conn), text, conn };
  });
  mark('server_full_shown');
  await api('DELETE', `/v1/sessions/${blocker.id}`);

  // 4. The page reconnected with the same prompt and settings: edited frames arrive.
  const first = await waitFor(`framesDecoded > ${MIN_FRAMES}`, 60000, async () => {
    const s = await page.evaluate(() => window.__lipar.stats());
    return { done: s.framesDecoded > MIN_FRAMES, ...s };
  });
  mark('frames_decoded', { stats: first });
  await page.mouse.move(0, 0); // no hover highlight in the picture
  result.screenshot_first = path.join(outDir, 'page-first.png');  // edited with the first prompt
  await page.screenshot({ path: result.screenshot_first });
  result.frames_decoded = first.framesDecoded;
  // the prompts the model knows, as chips under the prompt box (GET /v1/model)
  result.known_chips = await waitFor('the known-prompt chips', 20000, async () => {
    const chips = await page.$$eval('#known-list .chip', (els) => els.map((e) => e.textContent));
    return { done: chips.length > 0, chips };
  }).then((r) => r.chips, () => []);
  result.codec = first.codec;

  const sid = await page.evaluate(() => window.__lipar.session().id);
  result.session_id = sid;
  const before = await getSession(sid);
  result.session_before = { state: before.state, prompt: before.prompt, stats: before.stats };

  // The person changes the prompt: focus the box, replace the text, press Enter.
  await page.click('#prompt');
  await page.fill('#prompt', SECOND_PROMPT);
  await page.press('#prompt', 'Enter');
  mark('prompt_typed');

  const after = await waitFor('the new prompt in the session stats', 40000, async () => {
    const s = await getSession(sid);
    return { done: s.prompt === SECOND_PROMPT && s.stats.active_prompt === SECOND_PROMPT, ...s };
  });
  mark('prompt_applied', { blocks_out: after.stats.blocks_out });
  result.session_after = { state: after.state, prompt: after.prompt, stats: after.stats };

  // Let the page poll once more so the overlay shows the live numbers, then check what the person sees.
  await waitFor('the page to show the new prompt', 10000, async () => {
    const text = await page.textContent('#applied');
    return { done: text.includes(SECOND_PROMPT), text };
  });
  // Frames edited with the old prompt may still be queued on their way to the screen (the outbound pacing and
  // the jitter buffer): let SETTLE_BLOCKS more blocks of frames arrive so that the screenshot shows the new prompt.
  const model = await (await fetch(`${url}/v1/model`)).json();
  const SETTLE_FRAMES = SETTLE_BLOCKS * model.frames_per_block;
  const atApply = (await page.evaluate(() => window.__lipar.stats())).framesDecoded;
  await waitFor('frames edited with the new prompt on screen', 30000, async () => {
    const s = await page.evaluate(() => window.__lipar.stats());
    return { done: s.framesDecoded >= atApply + SETTLE_FRAMES, framesDecoded: s.framesDecoded };
  });
  const end = await page.evaluate(() => window.__lipar.stats());
  result.frames_decoded_end = end.framesDecoded;
  result.overlay = await page.evaluate(() =>
    Object.fromEntries(['s-fps', 's-lat', 's-prune', 's-block'].map((id) => [id, document.getElementById(id).textContent])),
  );
  result.connection = await page.textContent('#conn');
  result.error_banner_hidden = await page.evaluate(() => document.getElementById('error').hidden);

  await page.mouse.move(0, 0); // no hover highlight in the picture
  result.screenshot = path.join(outDir, 'page.png');
  await page.screenshot({ path: result.screenshot });

  // The server sends each block's token mask with the session stats: the page offers the heat-map toggle and
  // paints the patches LIPAR recomputed over the output.
  await page.waitForSelector('#mask-field', { state: 'visible', timeout: 15000 });
  result.mask_toggle_visible_with_server_data = true;
  await page.check('#mask-on');
  result.mask_painted_px = (
    await waitFor('the heat map to be painted', 5000, async () => {
      const n = await page.evaluate(() => {
        const c = document.getElementById('mask');
        if (c.hidden || !c.width) return 0;
        const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let painted = 0;
        for (let i = 3; i < px.length; i += 4) if (px[i] > 0) painted += 1;
        return painted;
      });
      return { done: n > 0, n };
    })
  ).n;
  result.screenshot_mask = path.join(outDir, 'page-mask.png');
  await page.screenshot({ path: result.screenshot_mask });

  // 7. Snapshot and recording. The heat map off (it is not part of the output), then: Snapshot → a PNG download
  // of the current edited frame; Record → the timer runs (screenshot) → after REC_S seconds Stop → a webm
  // download of the edited stream; then a short side-by-side recording (edited video | webcam).
  // Preview, output and heat map (shown now) are mirrored alike (selfie view by default; the toggle flips all back).
  const transforms = () =>
    page.evaluate(() => ['in', 'out', 'mask'].map((id) => getComputedStyle(document.getElementById(id)).transform));
  result.mirror_on = await transforms();
  await page.uncheck('#mirror');
  result.mirror_off = await transforms();
  await page.check('#mirror');
  await page.uncheck('#mask-on');
  result.capture_disabled_before = await page.evaluate(() => document.getElementById('rec').disabled);
  await page.waitForSelector('#rec:not([disabled])', { timeout: 10000 });
  await page.waitForSelector('#snap:not([disabled])', { timeout: 10000 });
  result.output_size = await page.evaluate(() => {
    const v = document.getElementById('out');
    return [v.videoWidth, v.videoHeight];
  });
  const snapDl = page.waitForEvent('download', { timeout: 15000 });
  await page.click('#snap');
  const snap = await snapDl;
  result.snapshot = { name: snap.suggestedFilename(), path: path.join(outDir, 'snapshot.png') };
  await snap.saveAs(result.snapshot.path);
  mark('snapshot');

  const recorded = async (seconds, tag, shot) => {
    const a = await page.evaluate(() => window.__lipar.stats());
    await page.click('#rec');
    const t = Date.now();
    await waitFor('the recording to start', 5000, async () => {
      const r = await page.evaluate(() => window.__lipar.recording());
      return { done: r.state === 'recording', ...r };
    });
    if (shot) {
      await page.waitForTimeout(2500);
      await page.mouse.move(0, 0);
      await page.evaluate(() => window.scrollTo(0, 0)); // the timer sits over the top of the output
      result.screenshot_recording = path.join(outDir, 'page-recording.png');
      await page.screenshot({ path: result.screenshot_recording });
      result.rec_timer_text = await page.textContent('#rec-time');
      result.rec_badge_visible = await page.isVisible('#rec-badge');
      result.rec_button_text = await page.textContent('#rec');
    }
    await page.waitForTimeout(Math.max(0, seconds * 1000 - (Date.now() - t)));
    const dl = page.waitForEvent('download', { timeout: 30000 });
    await page.click('#rec');
    const wall = (Date.now() - t) / 1000;
    const b = await page.evaluate(() => window.__lipar.stats());
    const d = await dl;
    const file = path.join(outDir, `recording-${tag}.webm`);
    await d.saveAs(file);
    const info = await page.evaluate(() => window.__lipar.recording());
    return {
      name: d.suggestedFilename(),
      path: file,
      wall_s: wall,
      page: info,
      frames_decoded_during: b.framesDecoded - a.framesDecoded,
      timer_hidden_after: !(await page.isVisible('#rec-badge')),
    };
  };
  result.recording = await recorded(REC_S, 'output', true);
  mark('recorded', { seconds: REC_S });
  await page.check('#rec-sbs');
  result.recording_sbs = await recorded(SBS_S, 'side-by-side', false);
  await page.uncheck('#rec-sbs');
  mark('recorded_side_by_side', { seconds: SBS_S });

  await page.setViewportSize({ width: 360, height: 780 });
  await page.waitForTimeout(300);
  result.screenshot_phone = path.join(outDir, 'page-phone.png');
  await page.screenshot({ path: result.screenshot_phone, fullPage: true });
  result.phone_overflow_px = await page.evaluate(
    () => document.documentElement.scrollWidth - document.documentElement.clientWidth,
  );
  mark('screenshots');

  // Stop from the page: the session is deleted on the server.
  await page.click('#stop');
  await waitFor('the session to end after Stop', 10000, async () => {
    const res = await fetch(`${url}/v1/sessions/${sid}`, { headers: { Authorization: `Bearer ${TOKEN}` } });
    const body = res.ok ? await res.json() : null;
    return { done: res.status === 404 || (body && ['closed', 'failed'].includes(body.state)), status: res.status };
  });
  mark('stopped');

  // 8. A link with the token in its fragment: never sent to the server, taken by the page and cleared from the
  // address bar at once.
  const linked = await context.newPage();
  watch(linked, 'token-link');
  const mainResponse = await linked.goto(`${url}/?prompt=${encodeURIComponent(FIRST_PROMPT)}#token=${TOKEN}`);
  result.csp_header = mainResponse.headers()['content-security-policy'] || null;
  const link = await waitFor('the page to take the token from the fragment', 10000, async () => {
    const r = await linked.evaluate(() => ({
      href: location.href,
      stored: sessionStorage.getItem('lipar.token'),
      field: document.getElementById('token').value,
    }));
    return { done: r.field !== '', address_has_token: r.href.includes('token'), stored_ok: r.stored === TOKEN, field_ok: r.field === TOKEN };
  });
  result.token_link = { address_has_token: link.address_has_token, stored_ok: link.stored_ok, field_ok: link.field_ok };
  await linked.close();
  mark('token_link');
  result.ok = true;
} catch (e) {
  result.error = String(e && e.stack ? e.stack : e);
  if (page) {
    result.screenshot = path.join(outDir, 'page-failure.png');
    await page.screenshot({ path: result.screenshot }).catch(() => {});
  }
} finally {
  if (browser) await browser.close().catch(() => {});
  result.total_s = (Date.now() - t0) / 1000;
  process.stdout.write(`${JSON.stringify(result)}\n`);
}
