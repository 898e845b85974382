// The form's settings: read from the controls, kept in localStorage, taken from the address on load, and the
// access token from the URL fragment.

import { ui } from './dom.js';
import { showError } from './status.js';
import { setSplit, setView, splitPosition, syncMirror, viewMode } from './view.js';

const STORE_KEY = 'lipar.settings.v1';

/** The settings as the controls show them now (numbers parsed and clamped). */
export function settings() {
  const seed = Number.parseInt(ui.seed.value, 10);
  const steps = Number.parseInt(ui.steps.value, 10);
  const lo = Number.parseInt(ui.steps.min, 10) || 1;
  const hi = Number.parseInt(ui.steps.max, 10) || 8;
  return {
    prompt: ui.prompt.value.trim(),
    seed: Number.isFinite(seed) && seed >= 0 ? seed : 0,
    strength: Number.parseFloat(ui.strength.value),
    steps: Number.isFinite(steps) ? Math.min(hi, Math.max(lo, steps)) : 3,
    transition: ui.transition.value === 'smooth' ? 'smooth' : 'cut',
    blend: Number.parseInt(ui.blend.value, 10) || 0,
    camera: ui.camera.value,
    mirror: ui.mirror.checked,
    recSideBySide: ui.recSbs.checked,
    view: viewMode(),
    split: splitPosition(),
    strengthFull: ui.strengthFull.checked,
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
  if (typeof saved.strengthFull === 'boolean') ui.strengthFull.checked = saved.strengthFull;
  syncMirror();
  setView(pick('view'));
  setSplit(Number.parseFloat(pick('split') ?? 50));
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
// the address names them; with `ranges` (GET /v1/model) the controls' limits too.
export function applyModelDefaults(model) {
  const q = new URLSearchParams(location.search);
  if (model && model.ranges) {
    applyRanges(model.ranges, q);
    return;
  }
  // an older server: its defaults only, the page's own limits
  if (model && Number.isFinite(model.strength) && !q.has('strength')) {
    ui.strength.value = String(model.strength);
    ui.strengthV.textContent = Number.parseFloat(ui.strength.value).toFixed(2);
  }
  if (model && Number.isFinite(model.steps) && !q.has('steps')) ui.steps.value = String(model.steps);
}

const STRENGTH_STEP = 0.01;

function applyRanges(r, q) {
  if (r.steps) {
    ui.steps.min = String(r.steps.min);
    ui.steps.max = String(r.steps.max);
    if (!q.has('steps') && Number.isFinite(r.steps.default)) ui.steps.value = String(r.steps.default);
  }
  if (r.blend_blocks) {
    ui.blend.min = String(r.blend_blocks.min);
    ui.blend.max = String(r.blend_blocks.max);
  }
  if (Number.isFinite(r.prompt_max_chars)) ui.prompt.maxLength = r.prompt_max_chars;
  const s = r.strength;
  if (!s) return;
  const asked = q.has('strength') ? Number.parseFloat(q.get('strength')) : s.default;
  const want = Number.isFinite(asked) ? asked : s.default;
  const narrower = s.recommended_min > s.min || s.recommended_max < s.max;
  ui.strengthFullField.hidden = !narrower;
  // a strength the address asks for outside the recommended range: the full range, so that it is kept
  if (narrower && (want < s.recommended_min || want > s.recommended_max)) ui.strengthFull.checked = true;
  syncStrengthRange(r);
  ui.strength.value = String(want);
  syncLabels();
}

/**
 * The strength slider's limits: the model's recommended range (GET /v1/model `ranges.strength`), or with
 * "Full range (advanced)" ticked every strength the API accepts; either way no lower than the steps in use
 * allow (`min_by_steps`). Rounded inward to the slider's 0.01 step. Returns whether the value changed (the
 * browser clamps it into the new range).
 */
export function syncStrengthRange(ranges) {
  const s = ranges && ranges.strength;
  if (!s) return false;
  const full = ui.strengthFull.checked || ui.strengthFullField.hidden;
  const steps = settings().steps;
  const byStep = s.min_by_steps && Number.isFinite(s.min_by_steps[steps]) ? s.min_by_steps[steps] : s.min;
  let lo = Math.max(full ? s.min : s.recommended_min, byStep);
  let hi = full ? s.max : s.recommended_max;
  lo = Math.ceil(lo / STRENGTH_STEP - 1e-6) * STRENGTH_STEP;
  hi = Math.max(lo, Math.floor(hi / STRENGTH_STEP + 1e-6) * STRENGTH_STEP);
  const before = ui.strength.value;
  ui.strength.step = String(STRENGTH_STEP);
  ui.strength.min = lo.toFixed(2);
  ui.strength.max = hi.toFixed(2);
  ui.strengthHint.hidden = ui.strengthFullField.hidden; // only where the model recommends a range
  ui.strengthHint.textContent = full
    ? `recommended for this model: ${s.recommended_min.toFixed(2)}–${s.recommended_max.toFixed(2)}`
    : `the range this model edits well at (${lo.toFixed(2)}–${hi.toFixed(2)})`;
  syncLabels();
  return ui.strength.value !== before;
}
