// The prompts the model knows (chips under the prompt field) and which prompt the output shows now.

import { ui } from './dom.js';

// A model trained on a fixed set of prompts lists them (GET /v1/model); one chip per edit, its canonical
// prompt as the label and the paraphrases in the tooltip. Open-vocabulary models (prompts null) show nothing.
// A chip's click is handled by controls.js (one listener on the list).
export function renderKnown(prompts) {
  const edits = Object.entries(prompts || {}).filter(([, list]) => Array.isArray(list) && list.length);
  ui.knownList.replaceChildren(
    ...edits.map(([edit, [canonical, ...others]]) => {
      const chip = document.createElement('button');
      chip.type = 'button';
      chip.className = 'chip';
      chip.textContent = canonical;
      chip.dataset.prompt = canonical;
      chip.title = others.length ? `${edit} · also: ${others.join(' · ')}` : edit;
      return chip;
    }),
  );
  ui.known.hidden = edits.length === 0;
  markKnown();
}

/** The chip of the prompt in the field is marked current. */
export function markKnown() {
  const current = ui.prompt.value.trim();
  for (const chip of ui.knownList.children) {
    if (chip.dataset.prompt === current) chip.setAttribute('aria-current', 'true');
    else chip.removeAttribute('aria-current');
  }
}

/** The caption under the output: the active prompt and since which block, or that a new one is on its way. */
export function renderApplied(st, stats) {
  if (st.pendingPrompt && stats.active_prompt === st.pendingPrompt) {
    st.pendingPrompt = null;
  }
  if (st.pendingPrompt) {
    ui.applied.textContent = '· applying the new prompt…';
  } else if (stats.active_prompt) {
    const at = stats.prompt_applied_at_block;
    ui.applied.textContent = `· “${stats.active_prompt}”${at != null ? ` since block ${at}` : ''}`;
  }
}
