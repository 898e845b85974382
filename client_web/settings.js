// The form's settings: read from the controls, kept in localStorage, taken from the address on load, and the
// access token from the URL fragment.

import { ui } from './dom.js';
import { showError } from './status.js';
import { syncMirror } from './view.js';

const STORE_KEY = 'lipar.settings.v1';

/** The settings as the controls show them now (numbers parsed and clamped). */
export function settings() {
  const seed = Number.parseInt(ui.seed.value, 10);
  const steps = Number.parseInt(ui.steps.value, 10);
  return {
    prompt: ui.prompt.value.trim(),
    seed: Number.isFinite(seed) && seed >= 0 ? seed : 0,
    strength: Number.parseFloat(ui.strength.value),
    steps: Number.isFinite(steps) ? Math.min(8, Math.max(1, steps)) : 3,
    transition: ui.transition.value === 'smooth' ? 'smooth' : 'cut',
    blend: Number.parseInt(ui.blend.value, 10) || 0,
    camera: ui.camera.value,
    mirror: ui.mirror.checked,
    recSideBySide: ui.recSbs.checked,
  };
}

export function saveSettings() {
  try {
    localStorage.setItem(STORE_KEY, JSON.stringify(settings()));
  } catch {
    // private mode: settings live only in the page
  }
}

/** Fill the controls from the address (first) and localStorage; returns `{ autostart }`. */
export function loadSettings(st) {
  let saved = {};
  try {
    saved = JSON.parse(localStorage.getItem(STORE_KEY) || '{}') || {};
  } catch {
    saved = {};
  }
  const q = new URLSearchParams(location.search);
  const pick = (k) => (q.has(k) ? q.get(k) : saved[k]);
  if (pick('prompt')) ui.prompt.value = String(pick('prompt'));
  if (pick('seed') != null) ui.seed.value = String(pick('seed'));
  if (pick('strength') != null) ui.strength.value = String(pick('strength'));
  if (pick('steps') != null) ui.steps.value = String(pick('steps'));
  if (pick('transition')) ui.transition.value = pick('transition') === 'smooth' ? 'smooth' : 'cut';
  if (pick('blend') != null) ui.blend.value = String(pick('blend'));
  const mirror = pick('mirror');
  if (mirror != null) ui.mirror.checked = !['0', 'false', 'no', false].includes(mirror);
  if (typeof saved.recSideBySide === 'boolean') ui.recSbs.checked = saved.recSideBySide;
  syncMirror();
  st.savedCamera = saved.camera || '';
  const autostart = ['1', 'true', 'yes'].includes((q.get('autostart') || '').toLowerCase());
  ui.token.value = takeToken(q);
  syncLabels();
  return { autostart };
}

// The access token comes from the URL fragment (`#token=…`), which the browser never sends to the server, so it
// stays out of access logs, proxies and Referer headers; or the person types it. It is kept in sessionStorage
// (this tab only) and removed from the address bar and history at once. A `?token=` in the query is not used:
// the browser already sent it to the server in the request line; the page removes it and says why.
function takeToken(q) {
  const h = new URLSearchParams(location.hash.replace(/^#/, ''));
  const fromFragment = h.get('token');
  const inQuery = q.has('token');
  if (h.has('token') || inQuery) {
    h.delete('token');
    q.delete('token');
    const query = q.toString() ? `?${q}` : '';
    const hash = h.toString() ? `#${h}` : '';
    history.replaceState(null, '', `${location.pathname}${query}${hash}`);
  }
  if (fromFragment) {
    try {
      sessionStorage.setItem('lipar.token', fromFragment);
    } catch {
      // storage disabled: the token lives in the field only
    }
  }
  if (inQuery && !fromFragment) {
    showError(
      'The link carried the access token as "?token=", which is sent to the server and can end up in logs: ' +
        'it was not used. Use a link with "#token=…" instead, or enter the token below.',
    );
  }
  let stored = '';
  try {
    stored = sessionStorage.getItem('lipar.token') || '';
  } catch {
    stored = '';
  }
  return fromFragment || stored;
}

/** The value labels beside the sliders; blend only with a smooth transition. */
export function syncLabels() {
  ui.strengthV.textContent = Number.parseFloat(ui.strength.value).toFixed(2);
  ui.blendV.textContent = ui.blend.value;
  ui.blend.disabled = ui.transition.value !== 'smooth';
}

// The model's own strength and steps (a model trained for one noise level edits poorly at another), unless
// the address names them.
export function applyModelDefaults(model) {
  const q = new URLSearchParams(location.search);
  if (model && Number.isFinite(model.strength) && !q.has('strength')) {
    ui.strength.value = String(model.strength);
    ui.strengthV.textContent = Number.parseFloat(ui.strength.value).toFixed(2);
  }
  if (model && Number.isFinite(model.steps) && !q.has('steps')) ui.steps.value = String(model.steps);
}
