// How the videos are shown: mirrored (selfie view) and the webcam preview cropped to what the model sees.

import { ui } from './dom.js';

/** Preview, output and heat map flip together with the Mirror toggle (style.css `.stage.mirrored`). */
export function syncMirror() {
  ui.stage.classList.toggle('mirrored', ui.mirror.checked);
}

// The webcam preview shows the part of the camera image the model sees: the server scales each frame to cover
// the model's size and keeps the centre (a 832x480 camera and a 256x256 model: the centre square). The preview
// frame takes the model's aspect ratio and the video covers it, centred (style.css, object-fit: cover).
export function showModelCrop(model) {
  if (!model || !(model.width > 0) || !(model.height > 0)) return;
  const frame = ui.inp.closest('.frame');
  frame.style.setProperty('--model-aspect', `${model.width} / ${model.height}`);
  frame.dataset.crop = 'model';
  ui.inp.title = `The part of your camera the model edits (centre, ${model.width}:${model.height})`;
}
