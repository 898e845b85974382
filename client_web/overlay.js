// Mask heat map over the edited video and formatting of the live numbers.

// Decode the server's per-block mask into a [rows][cols] grid of recompute fractions in [0, 1].
// Accepted shapes (the first the server sends wins):
//   {"grid": [T, H, W], "bits": "<base64 of np.packbits(mask) in C order, big-endian bits>"}
//   {"grid": [H, W], "values": [h*w floats in [0, 1]]}
export function decodeMask(mask) {
  if (!mask || !Array.isArray(mask.grid) || mask.grid.length < 2) return null;
  const dims = mask.grid.map(Number);
  const w = dims[dims.length - 1];
  const h = dims[dims.length - 2];
  const t = dims.length > 2 ? dims.slice(0, -2).reduce((a, b) => a * b, 1) : 1;
  if (!(w > 0 && h > 0 && t > 0)) return null;
  const frac = new Float32Array(h * w);
  if (Array.isArray(mask.values) && mask.values.length >= h * w) {
    for (let i = 0; i < h * w; i += 1) frac[i] = Math.min(1, Math.max(0, Number(mask.values[i]) || 0));
    return { w, h, frac };
  }
  if (typeof mask.bits !== 'string') return null;
  let bytes;
  try {
    bytes = Uint8Array.from(atob(mask.bits), (c) => c.charCodeAt(0));
  } catch {
    return null;
  }
  if (bytes.length * 8 < t * h * w) return null;
  for (let f = 0; f < t; f += 1) {
    for (let i = 0; i < h * w; i += 1) {
      const k = f * h * w + i;
      if ((bytes[k >> 3] >> (7 - (k & 7))) & 1) frac[i] += 1 / t;
    }
  }
  return { w, h, frac };
}

// Colour of a recompute fraction: transparent where skipped, warm where recomputed.
function heat(v) {
  if (v <= 0) return null;
  const r = 255;
  const g = Math.round(200 * (1 - v) + 40);
  const b = Math.round(60 * (1 - v));
  const a = 0.18 + 0.42 * v;
  return `rgba(${r},${g},${b},${a.toFixed(3)})`;
}

// Draw `grid` over the displayed picture of `video` (object-fit: contain) on `canvas`.
export function drawMask(canvas, video, grid) {
  const cw = canvas.clientWidth;
  const ch = canvas.clientHeight;
  const dpr = window.devicePixelRatio || 1;
  if (canvas.width !== Math.round(cw * dpr) || canvas.height !== Math.round(ch * dpr)) {
    canvas.width = Math.round(cw * dpr);
    canvas.height = Math.round(ch * dpr);
  }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, cw, ch);
  if (!grid || !video.videoWidth) return;
  const scale = Math.min(cw / video.videoWidth, ch / video.videoHeight);
  const vw = video.videoWidth * scale;
  const vh = video.videoHeight * scale;
  const x0 = (cw - vw) / 2;
  const y0 = (ch - vh) / 2;
  const sx = vw / grid.w;
  const sy = vh / grid.h;
  for (let y = 0; y < grid.h; y += 1) {
    for (let x = 0; x < grid.w; x += 1) {
      const c = heat(grid.frac[y * grid.w + x]);
      if (!c) continue;
      ctx.fillStyle = c;
      ctx.fillRect(x0 + x * sx, y0 + y * sy, Math.ceil(sx), Math.ceil(sy));
    }
  }
  ctx.strokeStyle = 'rgba(255,255,255,0.06)';
  ctx.lineWidth = 1;
  ctx.beginPath();
  for (let x = 1; x < grid.w; x += 1) {
    ctx.moveTo(x0 + x * sx, y0);
    ctx.lineTo(x0 + x * sx, y0 + vh);
  }
  for (let y = 1; y < grid.h; y += 1) {
    ctx.moveTo(x0, y0 + y * sy);
    ctx.lineTo(x0 + vw, y0 + y * sy);
  }
  ctx.stroke();
}

export const fmt = {
  fps: (v) => (v == null || !Number.isFinite(v) ? '–' : v.toFixed(1)),
  ms: (v) => (v == null || !Number.isFinite(v) ? '–' : `${Math.round(v)} ms`),
  pct: (v) => (v == null || !Number.isFinite(v) ? '–' : `${Math.round(100 * v)} %`),
};

// Glass-to-glass estimate from what we can see: server capture-to-send p50 + network round trip (both
// directions) + the receive jitter buffer + one frame of capture and one of display.
export function glassToGlass(serverP50, rttMs, jitterBufferMs, fps) {
  if (serverP50 == null) return null;
  const frame = 1000 / (fps && fps > 0 ? fps : 30);
  return serverP50 + (rttMs || 0) + (jitterBufferMs || 0) + 2 * frame;
}
