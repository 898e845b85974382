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
// active; (6) screenshots (desktop); feedback: the strength and steps controls follow GET /v1/model's ranges
// (recommended range, full range behind a toggle), the notice by the prompt field for an unknown and a known
// prompt (POST /v1/model/match); compare and look: the split view (aligned, mirrored alike, its divider moved by
// keyboard and pointer; screenshot), output only, the view kept in localStorage, fullscreen on and off; "Copy
// viewer link"; (7) Snapshot → a PNG download, Record → timer (screenshot) → Stop → a webm
// download of REC_S seconds (env, default 30), then a short side-by-side recording; screenshot at 360 px phone
// width; Stop ends the session; (8) a link carrying the
// token in its fragment (#token=...): the page takes it, keeps it in sessionStorage and clears the address bar;
// (9) a server still starting (routed answers): the page shows its warm-up stage and bar, and starts once ready.
// While waiting for the first frames the warm-up texts shown are collected; during the long recording the stats
// overlay is sampled (it must never drop to 0 or a dash between the server's blocks). Every step's time, any unexpected browser console error and every Content-Security-Policy violation (the
// server sends a strict CSP) go into the result.
import path from 'node:path';
import { launchChromium, waitFor } from './common.mjs';

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
  browser = await launchChromium([
    '--use-fake-device-for-media-stream',
    '--use-fake-ui-for-media-stream',
    `--use-file-for-fake-video-capture=${y4m}`,
    '--autoplay-policy=no-user-gesture-required',
  ]);
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
  const warmupTexts = new Set();
  const first = await waitFor(`framesDecoded > ${MIN_FRAMES}`, 60000, async () => {
    const s = await page.evaluate(() => window.__lipar.stats());
    const ph = await page.evaluate(() => {
      const p = document.getElementById('placeholder');
      const bar = document.getElementById('warmup-bar');
      return p.hidden ? null : { text: p.textContent.trim(), bar: bar.hidden ? null : [bar.value, bar.max] };
    });
    if (ph) warmupTexts.add(JSON.stringify(ph));
    return { done: s.framesDecoded > MIN_FRAMES, ...s };
  }, 200);
  result.warmup_texts = [...warmupTexts].map((t) => JSON.parse(t));
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
  result.overlay_titles = await page.evaluate(() =>
    Object.fromEntries(['s-fps', 's-lat', 's-prune', 's-block'].map((id) => [id, document.getElementById(id).title])),
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

  // Feedback: the controls take their limits from GET /v1/model's ranges.
  result.model_ranges = model.ranges || null;
  const strengthControl = () =>
    page.evaluate(() => {
      const s = document.getElementById('strength');
      const n = document.getElementById('steps');
      const full = document.getElementById('strength-full-field');
      return {
        min: Number(s.min), max: Number(s.max), step: Number(s.step), value: Number(s.value),
        steps_min: Number(n.min), steps_max: Number(n.max), steps: Number(n.value),
        full_toggle_visible: !full.hidden, hint: document.getElementById('strength-hint').textContent,
        prompt_max: document.getElementById('prompt').maxLength,
      };
    });
  result.strength_control = { recommended: await strengthControl() };
  if (result.strength_control.recommended.full_toggle_visible) {
    await page.check('#strength-full');
    result.strength_control.full = await strengthControl();
    await page.uncheck('#strength-full');
    result.strength_control.back = await strengthControl();
  }
  mark('ranges');

  // Feedback: the notice by the prompt field says whether the model knows what is typed (not applied: no Enter).
  const UNKNOWN_PROMPT = 'a purple giraffe made of clouds';
  const notice = async (prompt) => {
    await page.fill('#prompt', prompt);
    const expected = await (
      await fetch(`${url}/v1/model/match`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ prompt }),
      })
    ).json();
    const shown = await waitFor(`the notice for "${prompt}"`, 10000, async () => {
      const r = await page.evaluate(() => {
        const n = document.getElementById('prompt-note');
        return { hidden: n.hidden, kind: n.dataset.kind || null, text: n.textContent };
      });
      return { done: !r.hidden && r.kind === (expected.known ? 'known' : 'unknown'), ...r };
    });
    return { prompt, api: expected, kind: shown.kind, text: shown.text };
  };
  result.prompt_notice = { unknown: await notice(UNKNOWN_PROMPT), known: await notice(SECOND_PROMPT) };
  mark('prompt_notice');

  // Compare and look: the split view. One frame: the webcam left of the divider, the edited video right of it,
  // both covering the same box (the output's aspect ratio) and mirrored alike.
  await page.check('input[name="view"][value="split"]');
  result.split = await waitFor('the split view with the webcam playing in it', 10000, async () => {
    const r = await page.evaluate(() => {
      const rect = (el) => {
        const b = el.getBoundingClientRect();
        return [b.x, b.y, b.width, b.height].map((v) => Math.round(v));
      };
      const out = document.getElementById('out');
      const sin = document.getElementById('split-in');
      const paneIn = document.querySelector('.pane-in');
      return {
        view: document.getElementById('stage').dataset.view,
        webcam_pane_shown: getComputedStyle(paneIn).display !== 'none',
        split_in_playing: sin.videoWidth > 0 && !sin.paused,
        out_rect: rect(out),
        split_in_rect: rect(sin),
        out_aspect: out.videoWidth / out.videoHeight,
        frame_aspect: out.getBoundingClientRect().width / out.getBoundingClientRect().height,
        transforms: [out, sin].map((e) => getComputedStyle(e).transform),
        clip: getComputedStyle(document.getElementById('split-in-clip')).clipPath,
        divider_left: getComputedStyle(document.getElementById('split-line')).left,
        frame_width: Math.round(document.getElementById('out-frame').getBoundingClientRect().width),
      };
    });
    return { done: r.view === 'split' && r.split_in_playing, ...r };
  });
  // the divider by keyboard: focus it, five steps left
  await page.focus('#split-pos');
  for (let i = 0; i < 5; i += 1) await page.keyboard.press('ArrowLeft');
  result.split.after_keys = await page.evaluate(() => ({
    value: Number(document.getElementById('split-pos').value),
    split: document.getElementById('out-frame').style.getPropertyValue('--split'),
  }));
  // and by pointer: drag it to a quarter of the frame's width
  const box = await page.locator('#out-frame').boundingBox();
  await page.mouse.move(box.x + box.width * 0.45, box.y + box.height / 2);
  await page.mouse.down();
  await page.mouse.move(box.x + box.width * 0.35, box.y + box.height / 2, { steps: 4 });
  await page.mouse.move(box.x + box.width * 0.25, box.y + box.height / 2, { steps: 4 });
  await page.mouse.up();
  result.split.after_drag = await page.evaluate(() => Number(document.getElementById('split-pos').value));
  await page.focus('#split-pos');
  await page.keyboard.press('Home');
  result.split.after_home = await page.evaluate(() => Number(document.getElementById('split-pos').value));
  await page.evaluate(() => {
    const el = document.getElementById('split-pos');
    el.value = '50';
    el.dispatchEvent(new Event('input', { bubbles: true }));
    el.dispatchEvent(new Event('change', { bubbles: true }));
  });
  result.split.saved = await page.evaluate(() => JSON.parse(localStorage.getItem('lipar.settings.v1') || '{}').view);
  await page.mouse.move(0, 0);
  await page.evaluate(() => window.scrollTo(0, 0));
  result.screenshot_split = path.join(outDir, 'page-split.png');
  await page.screenshot({ path: result.screenshot_split });
  mark('split_view');

  await page.check('input[name="view"][value="output"]');
  result.output_only = await page.evaluate(() => ({
    view: document.getElementById('stage').dataset.view,
    webcam_pane_shown: getComputedStyle(document.querySelector('.pane-in')).display !== 'none',
    divider_shown: !document.getElementById('split-pos').hidden,
    saved: JSON.parse(localStorage.getItem('lipar.settings.v1') || '{}').view,
  }));
  await page.check('input[name="view"][value="sbs"]');
  result.side_by_side = await page.evaluate(() => ({
    view: document.getElementById('stage').dataset.view,
    webcam_pane_shown: getComputedStyle(document.querySelector('.pane-in')).display !== 'none',
    split_in_source: document.getElementById('split-in').srcObject !== null,
  }));

  // Fullscreen: the button asks for the stage on the whole screen; Esc (or the button again) leaves.
  await page.evaluate(() => {
    window.__fsCalls = [];
    const orig = Element.prototype.requestFullscreen;
    Element.prototype.requestFullscreen = function (opts) {
      window.__fsCalls.push(this.id);
      return orig.call(this, opts);
    };
  });
  const fsState = () =>
    page.evaluate(() => ({
      element: document.fullscreenElement ? document.fullscreenElement.id : null,
      pressed: document.getElementById('fullscreen').getAttribute('aria-pressed'),
      calls: window.__fsCalls,
    }));
  result.fullscreen = { button_visible: await page.isVisible('#fullscreen') };
  await page.click('#fullscreen');
  result.fullscreen.on = await waitFor('fullscreen (or at least its request)', 5000, async () => {
    const r = await fsState();
    return { done: r.element === 'stage' && r.pressed === 'true', ...r };
  }).catch(async () => ({ ...(await fsState()), entered: false }));
  if (result.fullscreen.on.element === 'stage') {
    await page.keyboard.press('Escape');
    result.fullscreen.left_by = 'escape';
    const off = () => fsState().then((r) => ({ done: r.element === null && r.pressed === 'false', ...r }));
    result.fullscreen.off = await waitFor('fullscreen to end (Esc)', 3000, off).catch(async () => {
      // headless Chromium may not hand Esc to the fullscreen handling: the button leaves too
      result.fullscreen.left_by = 'button';
      await page.click('#fullscreen');
      return waitFor('fullscreen to end (button)', 5000, off);
    });
  }
  mark('fullscreen');

  // Share: "Copy viewer link" shows while streaming; the link is the session's viewer page with the token.
  // (the list replaces the origin's permissions: without 'camera' in it Chromium ends the webcam's track)
  await context.grantPermissions(['camera', 'clipboard-read', 'clipboard-write'], { origin: url });
  result.viewer = { button_visible: await page.isVisible('#copy-link') };
  await page.click('#copy-link');
  const viewer = await waitFor('the viewer link', 5000, async () => {
    const r = await page.evaluate(async () => ({
      field: document.getElementById('viewer-link').value,
      note: document.getElementById('share-note').textContent,
      clipboard: await navigator.clipboard.readText().catch((e) => `unreadable: ${e}`),
    }));
    // the field is filled before the clipboard write resolves; the note comes after it
    return { done: r.field !== '' && r.note !== '', ...r };
  });
  const expectedLink = `${url}/view/${sid}#token=${TOKEN}`;
  const hideToken = (v) => String(v).replaceAll(TOKEN, '<token>');
  result.viewer.link = hideToken(viewer.field);
  result.viewer.link_ok = viewer.field === expectedLink;
  result.viewer.clipboard_ok = viewer.clipboard === expectedLink;
  result.viewer.clipboard = hideToken(viewer.clipboard);
  result.viewer.note = viewer.note;
  result.viewer.session_viewer_url = await page.evaluate(() => window.__lipar.session().viewer_url || null);
  mark('viewer_link');
  // The link opens the viewer page, which plays the session's edited video.
  const viewerPage = await context.newPage();
  watch(viewerPage, 'viewer');
  await viewerPage.goto(viewer.field);
  result.viewer.page = await waitFor('edited frames on the viewer page', 30000, async () => {
    const v = await viewerPage.evaluate(() => ({ ...(window.liparViewer || {}), address: location.href }));
    return { done: v.frames > 0 && v.width > 0, ...v, address_has_token: v.address.includes('token') };
  });
  delete result.viewer.page.address;
  await viewerPage.close();
  mark('viewer_page');
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
    // the recording lasts `seconds`; meanwhile the stats overlay is read twice a second
    const overlay = [];
    while (Date.now() - t < seconds * 1000) {
      overlay.push(await page.evaluate(() => [document.getElementById('s-fps').textContent, document.getElementById('s-lat').textContent]));
      await page.waitForTimeout(Math.min(500, Math.max(0, seconds * 1000 - (Date.now() - t))));
    }
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
      overlay,
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
  result.viewer.button_visible_after_stop = await page.isVisible('#copy-link');

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

  // 9. A server still starting (routed: the test's server is ready before the page opens): POST /v1/sessions
  // answers 503 with a long Retry-After and /readyz reports the workers' warm-up. The page shows the stage and a
  // bar, and connects again as soon as /readyz says ready, not after Retry-After.
  const starting = await context.newPage();
  watch(starting, 'server-starting');
  const compiling = { stage: 'compiling', done: 2, total: 5, fraction: 0.4 };
  let readyz = { status: 'unavailable', node_id: 'e2e', checks: {}, progress: compiling };
  const posts = [];
  await starting.route('**/readyz', (route) =>
    route.fulfill({
      status: readyz.status === 'ok' ? 200 : 503,
      contentType: 'application/json',
      body: JSON.stringify(readyz),
    }),
  );
  await starting.route('**/v1/sessions', (route) => {
    if (route.request().method() !== 'POST') return route.continue();
    posts.push(Date.now());
    return route.fulfill({
      status: 503,
      headers: { 'Retry-After': '60' },
      contentType: 'application/json',
      body: JSON.stringify({ error: { code: 'not_ready', message: 'the workers are starting' } }),
    });
  });
  await starting.goto(`${url}/?${q}`);
  const startingShown = await waitFor('the server warm-up progress', 10000, async () => {
    const r = await starting.evaluate(() => {
      const bar = document.getElementById('warmup-bar');
      return { text: document.getElementById('placeholder-text').textContent, bar: bar.hidden ? null : [bar.value, bar.max] };
    });
    return { done: r.bar !== null, ...r };
  });
  const postsBefore = posts.length;
  readyz = { status: 'ok', node_id: 'e2e', checks: {}, progress: { stage: 'ready', done: 0, total: 0, fraction: 1 } };
  const readyAt = Date.now();
  await waitFor('Start again once the server is ready', 10000, async () => ({ done: posts.length > postsBefore, posts: posts.length }));
  result.server_starting = {
    text: startingShown.text,
    bar: startingShown.bar,
    posts_before_ready: postsBefore,
    retry_after_s: 60,
    reconnect_after_ready_s: (posts[postsBefore] - readyAt) / 1000,
  };
  await starting.close();
  mark('server_starting');
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
