// Drives Debian's Chromium through the web client's camera rate (issue 16); prints one JSON result line.
//
//   node drive_camera_rate.mjs <server-url>
//
// Chromium's fake camera runs at 60 fps (`--use-fake-device-for-media-stream=fps=60`) and honours frameRate
// constraints, so the track's settings().frameRate shows the rate the page asked for. Three pages, each: load,
// wait for GET /v1/model, Start, read the camera, Stop.
//   real:  the server's own input_fps (measured at its warm-up); edited frames arrive.
//   fixed: GET /v1/model answered with input_fps 7 (routed): the camera is opened at 7.
//          Stop runs while the page's GET of its session is held unanswered (stopWithPollInFlight).
//   late:  the first GET /v1/model (on load) says null (a server still warming up), the next ones 9: the camera
//          opens at the default 30, then the page re-reads the model once its session exists and applies 9 to
//          the open track.
import { launchChromium, waitFor } from './common.mjs';

const [url] = process.argv.slice(2);
const PROMPT = 'thermal camera'; // one of the demo model's styles
const result = { ok: false, console_errors: [], page_errors: [] };

// The page's camera: what it asked for (window.__lipar.camera()) and what the track can do.
const camera = (page) =>
  page.evaluate(() => {
    const info = window.__lipar.camera();
    const stream = document.getElementById('in').srcObject;
    const track = stream && stream.getVideoTracks()[0];
    const caps = track && track.getCapabilities ? track.getCapabilities() : null;
    return { ...info, maxFrameRate: caps && caps.frameRate ? caps.frameRate.max : null };
  });

// `input_fps` of every GET /v1/model answer replaced by rateFor(n) (n: the how-many-th request, from 1).
async function routeModel(page, rateFor) {
  let n = 0;
  await page.route('**/v1/model', async (route) => {
    n += 1;
    const response = await route.fetch();
    const body = await response.json();
    body.input_fps = rateFor(n);
    await route.fulfill({ response, json: body });
  });
}

async function run(context, tag, setup, { frames = false, holdPoll = false } = {}) {
  const page = await context.newPage();
  page.on('console', (msg) => {
    if (msg.type() === 'error') result.console_errors.push(`${tag}: ${msg.text()}`);
  });
  page.on('pageerror', (err) => result.page_errors.push(`${tag}: ${err}`));
  if (setup) await setup(page);
  await page.goto(`${url}/?${new URLSearchParams({ prompt: PROMPT })}`);
  const model = await waitFor('GET /v1/model read by the page', 20000, async () => {
    const m = await page.evaluate(() => window.__lipar.model());
    return { done: Boolean(m), input_fps: m ? m.input_fps : undefined };
  });
  await page.evaluate(() => window.__lipar.start());
  const out = { model_input_fps: model.input_fps };
  out.opened = await waitFor('the camera to open', 20000, async () => {
    const c = await camera(page);
    return { done: c.settings !== null, ...c };
  });
  out.session = await waitFor('a session', 60000, async () => {
    const s = await page.evaluate(() => window.__lipar.session());
    return { done: Boolean(s && s.id), id: s && s.id };
  });
  if (frames) {
    out.frames = await waitFor('edited frames', 90000, async () => {
      const s = await page.evaluate(() => window.__lipar.stats());
      return { done: s.framesDecoded > 8, framesDecoded: s.framesDecoded };
    });
  }
  // settled: the rate asked for is the one the page wants now (a late rate applied), read once more
  const want = model.input_fps;
  out.final = await waitFor('the camera rate to settle', 30000, async () => {
    const c = await camera(page);
    const m = await page.evaluate(() => window.__lipar.model());
    const target = m && Number.isFinite(m.input_fps) ? m.input_fps : 30;
    return { done: c.requestedFps === target && c.settings && c.settings.frameRate <= target + 0.01, target, ...c };
  });
  out.final.first_model_input_fps = want;
  if (holdPoll) out.stop_with_poll_in_flight = await stopWithPollInFlight(page, out.session.id);
  else await page.evaluate(() => window.__lipar.stop());
  await page.close();
  return out;
}

// Stop while the page's GET of its session is unanswered (held here): the page keeps the connection (and so
// the session) until that GET answers, so the GET finds the session (200), not the 404 of a session its
// closed track already ended (which Chromium logs as a console error).
async function stopWithPollInFlight(page, id) {
  let release;
  const held = new Promise((resolve) => {
    release = resolve;
  });
  const pollStatus = new Promise((resolve) => {
    page.on('response', (r) => {
      if (r.request().method() === 'GET' && r.url().endsWith(`/v1/sessions/${id}`)) resolve(r.status());
    });
  });
  let holding = false;
  await page.route(`**/v1/sessions/${id}`, async (route) => {
    if (route.request().method() !== 'GET' || holding) return route.continue();
    holding = true;
    await new Promise((resolve) => release(resolve));
    await route.continue();
  });
  const unhold = await held; // the next poll (1 s) is held
  const stopping = page.evaluate(() => window.__lipar.stop());
  const out = {};
  // Stop is under way (it awaits the held GET): the page still holds its session, and so does the server
  out.page_session_kept = await page.evaluate(() => Boolean(window.__lipar.session()));
  out.server_status = (await fetch(`${url}/v1/sessions/${id}`)).status;
  unhold();
  await stopping;
  out.poll_status = await pollStatus;
  out.page_session_after_stop = await page.evaluate(() => window.__lipar.session());
  return out;
}

let browser;
try {
  browser = await launchChromium([
    '--use-fake-device-for-media-stream=fps=60',
    '--use-fake-ui-for-media-stream',
    '--autoplay-policy=no-user-gesture-required',
  ]);
  result.browser_version = browser.version();
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  result.real = await run(context, 'real', null, { frames: true });
  result.fixed = await run(context, 'fixed', (page) => routeModel(page, () => 7), { holdPoll: true });
  result.late = await run(context, 'late', (page) => routeModel(page, (n) => (n === 1 ? null : 9)));
  result.ok = true;
} catch (e) {
  result.error = String(e && e.stack ? e.stack : e);
} finally {
  if (browser) await browser.close();
}
console.log(JSON.stringify(result));
