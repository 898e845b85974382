// Record, Snapshot and the recording timer: the buttons' state and what they save (capture.js does the work).

import { clock, composite, fileName, pickMimeType, record, saveBlob, snapshot, withDuration } from './capture.js';
import { ui } from './dom.js';
import { showError } from './status.js';

function outputPlaying() {
  const v = ui.out;
  return Boolean(v.srcObject) && v.videoWidth > 0 && v.readyState >= 2 && !v.paused;
}

/** Record and Snapshot need edited frames on screen; Record stays enabled while recording (it is the Stop). */
export function syncCapture(st) {
  const playing = outputPlaying();
  const canRecord = pickMimeType() != null;
  ui.rec.disabled = !st.rec.current && !(playing && canRecord);
  ui.snap.disabled = !playing;
  if (!canRecord) ui.rec.title = 'This browser cannot record video (no MediaRecorder)';
}

export function startRecording(st) {
  if (st.rec.current || !outputPlaying()) return;
  const mimeType = pickMimeType();
  if (mimeType == null) return;
  const wantSbs = ui.recSbs.checked;
  let source = null;
  let handle;
  try {
    source = composite(ui.out, ui.inp, wantSbs);
    handle = record(source.stream, mimeType, () => source.paint()); // a first frame at once
  } catch (e) {
    if (source) source.stop();
    showError(`The browser could not start the recording: ${e && e.message ? e.message : e}`);
    return;
  }
  const rec = { handle, source, startedAt: performance.now(), started: new Date(), sideBySide: wantSbs };
  const tick = () => {
    ui.recTime.textContent = clock(performance.now() - rec.startedAt);
  };
  tick();
  rec.timer = setInterval(tick, 250);
  st.rec.current = rec;
  ui.recBadge.hidden = false;
  ui.rec.textContent = '■ Stop & save';
  ui.rec.setAttribute('aria-pressed', 'true');
  ui.recSbs.disabled = true;
  syncCapture(st);
  handle.done.then(
    (blob) => finishRecording(st, rec, blob, null),
    (err) => finishRecording(st, rec, null, err),
  );
}

/** The frame on screen once more, then stop: the file lasts until now even when the stream paused. */
export function stopRecording(st) {
  const rec = st.rec.current;
  if (!rec || rec.stopping) return;
  rec.stopping = true;
  rec.source.paint();
  setTimeout(() => rec.handle.stop(), 150); // time for the canvas to deliver that frame to the recorder
}

async function finishRecording(st, rec, blob, err) {
  const seconds = (performance.now() - rec.startedAt) / 1000;
  clearInterval(rec.timer);
  rec.source.stop();
  if (st.rec.current === rec) st.rec.current = null;
  ui.recBadge.hidden = true;
  ui.recTime.textContent = '00:00';
  ui.rec.textContent = '● Record';
  ui.rec.setAttribute('aria-pressed', 'false');
  ui.recSbs.disabled = false;
  syncCapture(st);
  if (err || !blob || !blob.size) {
    st.rec.last = { state: 'failed', error: String(err ? err.message || err : 'empty recording') };
    showError(`The recording failed${err && err.message ? `: ${err.message}` : ': no video was recorded.'}`);
    return;
  }
  const name = fileName('webm', rec.started);
  const file = await withDuration(blob, seconds);
  saveBlob(file, name);
  st.rec.last = {
    state: 'saved',
    name,
    bytes: file.size,
    durationWritten: file !== blob,
    mimeType: rec.handle.mimeType,
    seconds,
    sideBySide: rec.sideBySide,
  };
}

/** What window.__lipar.recording() reports. */
export function recordingInfo(st) {
  const rec = st.rec.current;
  return rec
    ? { state: 'recording', seconds: (performance.now() - rec.startedAt) / 1000, sideBySide: rec.sideBySide }
    : { state: 'idle', last: st.rec.last };
}

export async function takeSnapshot() {
  try {
    saveBlob(await snapshot(ui.out), fileName('png'));
  } catch (e) {
    showError(e && e.message ? e.message : String(e));
  }
}
