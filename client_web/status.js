// The connection pill, the error banner and the placeholder over the output.

import { describeError } from './api.js';
import { ui } from './dom.js';

/** Show the connection state (`idle`, `connecting`, `reconnecting`, `live`, `error`) and sync Start/Stop. */
export function setConn(st, state, text) {
  st.connState = state;
  ui.conn.dataset.state = state;
  ui.conn.textContent = text;
  ui.start.disabled = st.running;
  ui.stop.disabled = !st.running;
}

/** The banner with a message, or the human description of an error (api.js describeError). */
export function showError(e) {
  ui.errorText.textContent = typeof e === 'string' ? e : describeError(e);
  ui.error.hidden = false;
}

export function clearError() {
  ui.error.hidden = true;
  ui.errorText.textContent = '';
}

/** The text over the output (before the first edited frame), or none with `null`. */
export function setPlaceholder(text) {
  if (text == null) {
    ui.placeholder.hidden = true;
    return;
  }
  ui.placeholder.hidden = false;
  ui.placeholderText.textContent = text;
}
