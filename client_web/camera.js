// The webcam: the camera list, opening it once per run, switching cameras mid-session.

import { ui } from './dom.js';
import { listCameras, openCamera } from './rtc.js';
import { saveSettings } from './settings.js';
import { showError } from './status.js';

export async function refreshCameras(st) {
  let cams = [];
  try {
    cams = await listCameras();
  } catch {
    return;
  }
  const current = ui.camera.value || st.savedCamera;
  ui.camera.replaceChildren(new Option('Default camera', ''));
  cams.forEach((c, i) => ui.camera.add(new Option(c.label || `Camera ${i + 1}`, c.deviceId)));
  if ([...ui.camera.options].some((o) => o.value === current)) ui.camera.value = current;
}

/** The open camera, or open the chosen one (reused across reconnections). */
export async function ensureCamera(st) {
  if (st.stream && st.stream.getVideoTracks().some((t) => t.readyState === 'live')) return st.stream;
  st.stream = await openCamera(ui.camera.value);
  ui.inp.srcObject = st.stream;
  refreshCameras(st);
  return st.stream;
}

export function stopCamera(st) {
  if (st.stream) st.stream.getTracks().forEach((t) => t.stop());
  st.stream = null;
  ui.inp.srcObject = null;
}

/** Another camera picked: replace the track being sent without renegotiating. */
export async function switchCamera(st) {
  saveSettings();
  if (!st.stream) return;
  try {
    const fresh = await openCamera(ui.camera.value);
    const track = fresh.getVideoTracks()[0];
    const sender = st.pc && st.pc.getSenders().find((s) => s.track && s.track.kind === 'video');
    if (sender) await sender.replaceTrack(track);
    stopCamera(st);
    st.stream = fresh;
    ui.inp.srcObject = fresh;
  } catch (e) {
    showError(e);
  }
}
