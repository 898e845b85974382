// GET /v1/model: what the served model is, applied to the page (its defaults and ranges, its crop, its known
// prompts), then whether it knows the prompt in the field.

import { checkPrompt, renderKnown } from './prompts.js';
import { applyModelDefaults } from './settings.js';
import { showModelCrop } from './view.js';

/** Read the model info once (public: no token needed, so the chips are there from the start). An older server
 * or a network error: nothing changes, and the next Start tries again. */
export async function loadModel(app) {
  const { api, st } = app;
  if (st.model) return;
  try {
    st.model = await api.model();
  } catch {
    return;
  }
  applyModelDefaults(st.model);
  showModelCrop(st.model);
  renderKnown(st.model && st.model.prompts);
  checkPrompt(app);
}
