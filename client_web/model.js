// GET /v1/model: what the served model is, applied to the page (its defaults and ranges, its crop, its known
// prompts, the camera's frame rate), then whether it knows the prompt in the field.

import { syncCameraRate } from './camera.js';
import { checkPrompt, renderKnown } from './prompts.js';
import { applyModelDefaults } from './settings.js';
import { showModelCrop } from './view.js';

/** Read the model info once (public: no token needed, so the chips are there from the start). An older server
 * or a network error: nothing changes, and the next Start tries again. The server measures the frame rate its
 * model sustains (`input_fps`) at its warm-up: while that is null, each call reads it again (the page calls this
 * on load and once a session is created, i.e. the server is ready), and the camera follows it. */
export async function loadModel(app) {
  const { api, st } = app;
  if (st.model) {
    if (st.model.input_fps === null) await refreshRate(app);
    return;
  }
  try {
    st.model = await api.model();
  } catch {
    return;
  }
  applyModelDefaults(st.model);
  showModelCrop(st.model);
  renderKnown(st.model && st.model.prompts);
  checkPrompt(app);
  syncCameraRate(st);
}

// Only the measured rate is read again: the rest was applied once and the person may have changed it since.
async function refreshRate({ api, st }) {
  let fresh;
  try {
    fresh = await api.model();
  } catch {
    return;
  }
  if (!st.model || !fresh || fresh.input_fps == null) return;
  st.model.input_fps = fresh.input_fps;
  syncCameraRate(st);
}
