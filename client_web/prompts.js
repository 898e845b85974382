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

// ---- whether the model knows the prompt in the field ----------------------------------------------------

const CHECK_DELAY_MS = 300; // after the last keystroke
const TRY_MAX = 3; // canonical prompts suggested in the notice

/**
 * Ask the server (POST /v1/model/match) how the model understands the prompt in the field, 300 ms after the
 * last change; the newest answer wins. A server without that endpoint: the page matches the model's known
 * prompts exactly, and says nothing about others (the server's matcher would accept paraphrases).
 */
export function schedulePromptCheck(app) {
  const { st } = app;
  clearTimeout(st.promptCheck.timer);
  st.promptCheck.timer = setTimeout(() => checkPrompt(app), CHECK_DELAY_MS);
}

export async function checkPrompt({ api, st }) {
  clearTimeout(st.promptCheck.timer);
  const prompt = ui.prompt.value.trim();
  const seq = ++st.promptCheck.seq;
  if (!prompt) {
    showMatch(st, prompt, null);
    return;
  }
  let match = null;
  if (st.promptCheck.supported !== false) {
    try {
      match = await api.matchPrompt(prompt);
      st.promptCheck.supported = true;
    } catch (e) {
      if (e && (e.status === 404 || e.status === 405)) st.promptCheck.supported = false;
      match = null; // 422 (too long), network: no notice
    }
  }
  if (st.promptCheck.supported === false) match = localMatch(st.model, prompt);
  if (seq !== st.promptCheck.seq) return; // the person typed on meanwhile
  showMatch(st, prompt, match);
}

function localMatch(model, prompt) {
  const p = prompt.toLowerCase();
  for (const [edit, list] of Object.entries((model && model.prompts) || {})) {
    if (Array.isArray(list) && list.some((x) => String(x).toLowerCase() === p)) {
      return { known: true, edit, canonical: list[0] };
    }
  }
  return null;
}

/**
 * The notice under the prompt field for `match` (a PromptMatch: POST /v1/model/match or a session's
 * `prompt_match`) of `prompt`, shown only while the field still holds that prompt. Nothing for an
 * open-vocabulary model, an unreadable vocabulary (known null) or no answer.
 */
export function showMatch(st, prompt, match) {
  if (prompt !== ui.prompt.value.trim()) return;
  const note = ui.promptNote;
  if (!prompt || !match || match.open_vocabulary || match.known == null) {
    note.hidden = true;
    note.textContent = '';
    delete note.dataset.kind;
    return;
  }
  if (match.known) {
    note.dataset.kind = 'known';
    note.textContent = `Known edit: ${match.edit || match.canonical}`;
    if (match.canonical && match.canonical !== prompt) note.textContent += ` (as “${match.canonical}”)`;
  } else {
    const tries = Object.values((st.model && st.model.prompts) || {})
      .filter((list) => Array.isArray(list) && list.length)
      .map((list) => `“${list[0]}”`)
      .slice(0, TRY_MAX);
    note.dataset.kind = 'unknown';
    note.textContent =
      'Unknown to this demo model: the video passes through unchanged.' +
      (tries.length ? ` Try: ${tries.join(', ')}${tries.length === TRY_MAX ? ', …' : ''}` : '');
  }
  note.hidden = false;
}
