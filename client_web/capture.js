// Recording (MediaRecorder, webm) and snapshots (PNG) of the edited video, handed to the person as downloads.
// Files keep the camera's own orientation: the on-screen mirror (selfie view) is a display choice only.

// VP8 first: the cheapest to encode in software and played everywhere; VP9 and the browser's default after it.
const MIME_TYPES = ['video/webm;codecs=vp8', 'video/webm;codecs=vp9', 'video/webm'];
const VIDEO_BPS = 4_000_000;

/** The first webm type this browser's MediaRecorder offers: '' for its default, null when it cannot record. */
export function pickMimeType() {
  if (typeof window.MediaRecorder === 'undefined') return null;
  if (typeof MediaRecorder.isTypeSupported !== 'function') return '';
  return MIME_TYPES.find((t) => MediaRecorder.isTypeSupported(t)) || '';
}

/** `lipar-YYYYMMDD-HHMMSS.<ext>` in local time. */
export function fileName(ext, d = new Date()) {
  const p = (n) => String(n).padStart(2, '0');
  const day = `${d.getFullYear()}${p(d.getMonth() + 1)}${p(d.getDate())}`;
  return `lipar-${day}-${p(d.getHours())}${p(d.getMinutes())}${p(d.getSeconds())}.${ext}`;
}

/** m:ss (or h:mm:ss) of a duration in milliseconds. */
export function clock(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  const p = (n) => String(n).padStart(2, '0');
  const h = Math.floor(s / 3600);
  return h ? `${h}:${p(Math.floor(s / 60) % 60)}:${p(s % 60)}` : `${p(Math.floor(s / 60))}:${p(s % 60)}`;
}

/** The browser downloads `blob` as `name` (an <a download> on a blob: URL, revoked a minute later). */
export function saveBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  a.hidden = true;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/** The video's current frame at its own size as a PNG blob. */
export function snapshot(video) {
  const w = video.videoWidth;
  const h = video.videoHeight;
  if (!w || !h) return Promise.reject(new Error('The edited video shows no frame yet.'));
  const c = document.createElement('canvas');
  c.width = w;
  c.height = h;
  c.getContext('2d').drawImage(video, 0, 0, w, h);
  return new Promise((resolve, reject) =>
    c.toBlob((b) => (b ? resolve(b) : reject(new Error('The browser could not encode the snapshot.'))), 'image/png'),
  );
}

// Draws `src` into the rectangle (x, y, w, h) covering it, centred (like CSS object-fit: cover).
function drawCover(ctx, src, x, y, w, h) {
  const sw = src.videoWidth;
  const sh = src.videoHeight;
  if (!sw || !sh) {
    ctx.fillStyle = '#05060a';
    ctx.fillRect(x, y, w, h);
    return;
  }
  const scale = Math.max(w / sw, h / sh);
  const cw = w / scale;
  const ch = h / scale;
  ctx.drawImage(src, (sw - cw) / 2, (sh - ch) / 2, cw, ch, x, y, w, h);
}

/**
 * A canvas stream of the edited video, with the webcam on its right when `withInput` (centre-cropped to the same
 * size, as the model saw it), painted now and again on every new edited frame. Recording this canvas rather than
 * the received track means the file has a first frame at once even when the server sends its frames in bursts
 * seconds apart (a track that delivers no frame while recording gives an empty file). paint() paints the
 * current frame once more: at the recording's start and end, so that the file spans all of it even when the
 * stream pauses then. Returns { stream, paint, stop }.
 */
export function composite(out, inp, withInput) {
  const w = out.videoWidth;
  const h = out.videoHeight;
  const c = document.createElement('canvas');
  c.width = withInput ? 2 * w : w;
  c.height = h;
  const ctx = c.getContext('2d');
  const stream = c.captureStream(); // a frame each time the canvas is painted
  let live = true;
  let handle = 0;
  const useVfc = typeof out.requestVideoFrameCallback === 'function';
  const paint = () => {
    if (!live) return;
    ctx.drawImage(out, 0, 0, w, h);
    if (withInput) drawCover(ctx, inp, w, 0, w, h);
  };
  const draw = () => {
    if (!live) return;
    paint();
    handle = useVfc ? out.requestVideoFrameCallback(draw) : requestAnimationFrame(draw);
  };
  draw();
  return {
    stream,
    paint,
    stop() {
      live = false;
      if (useVfc) out.cancelVideoFrameCallback(handle);
      else cancelAnimationFrame(handle);
      stream.getTracks().forEach((t) => t.stop());
    },
  };
}

// ---- webm duration ------------------------------------------------------------------------------------
// Chromium's MediaRecorder writes a live webm: no Duration in the Segment's Info, so players show no length and
// often cannot seek. withDuration() inserts one (EBML element 0x4489, float64, in TimecodeScale units) into the
// Info element at the start of the file; the rest of the blob is reused as is. Anything unexpected (a SeekHead,
// whose offsets the insertion would move; a Duration already there; an unparsable head): the blob unchanged.

const ID = { segment: 0x18538067, seekHead: 0x114d9b74, info: 0x1549a966, cluster: 0x1f43b675, scale: 0x2ad7b1, duration: 0x4489 };
const HEAD_BYTES = 65536;

function readId(b, i) {
  const len = Math.clz32(b[i]) - 23; // 1..4: leading zeros of the first byte + 1
  if (len < 1 || len > 4 || i + len > b.length) throw new Error('bad EBML id');
  let v = 0;
  for (let k = 0; k < len; k += 1) v = v * 256 + b[i + k];
  return { id: v, len };
}

function readSize(b, i) {
  const len = Math.clz32(b[i]) - 23; // 1..8
  if (len < 1 || len > 8 || i + len > b.length) throw new Error('bad EBML size');
  let v = b[i] & (0xff >> len);
  let ones = v === 0xff >> len;
  for (let k = 1; k < len; k += 1) {
    v = v * 256 + b[i + k];
    ones = ones && b[i + k] === 0xff;
  }
  return { size: ones ? null : v, len };
}

function writeSize(b, i, len, v) {
  if (v >= 2 ** (7 * len) - 1) throw new Error('size does not fit');
  for (let k = len - 1; k >= 1; k -= 1) {
    b[i + k] = v % 256;
    v = Math.floor(v / 256);
  }
  b[i] = (0x80 >> (len - 1)) | v;
}

/** `blob` (a webm from MediaRecorder) with its Duration set to `seconds`; unchanged when that is not possible. */
export async function withDuration(blob, seconds) {
  try {
    const head = new Uint8Array(await blob.slice(0, HEAD_BYTES).arrayBuffer());
    let i = 0;
    const ebml = readId(head, i);
    const ebmlSize = readSize(head, i + ebml.len);
    i += ebml.len + ebmlSize.len + ebmlSize.size;
    const seg = readId(head, i);
    if (seg.id !== ID.segment) return blob;
    const segSizeAt = i + seg.len;
    const segSize = readSize(head, segSizeAt);
    i = segSizeAt + segSize.len;
    while (i < head.length) {
      const el = readId(head, i);
      const sz = readSize(head, i + el.len);
      const data = i + el.len + sz.len;
      if (el.id === ID.seekHead || el.id === ID.cluster || sz.size == null) return blob;
      if (el.id === ID.info) {
        const end = data + sz.size;
        if (end > head.length) return blob;
        let scale = 1_000_000; // ns per Duration unit (the default)
        for (let j = data; j < end; ) {
          const c = readId(head, j);
          const cs = readSize(head, j + c.len);
          const cd = j + c.len + cs.len;
          if (c.id === ID.duration) return blob;
          if (c.id === ID.scale) {
            scale = 0;
            for (let k = 0; k < cs.size; k += 1) scale = scale * 256 + head[cd + k];
          }
          j = cd + cs.size;
        }
        const dur = new Uint8Array(11);
        dur.set([0x44, 0x89, 0x88]);
        new DataView(dur.buffer).setFloat64(3, (seconds * 1e9) / (scale || 1_000_000));
        const before = head.slice(0, end);
        writeSize(before, i + el.len, sz.len, sz.size + dur.length);
        if (segSize.size != null) writeSize(before, segSizeAt, segSize.len, segSize.size + dur.length);
        return new Blob([before, dur, blob.slice(end)], { type: blob.type });
      }
      i = data + sz.size;
    }
  } catch {
    // not the webm we expected: keep the recording as it is
  }
  return blob;
}

/**
 * Records `stream` with MediaRecorder. Returns { mimeType, done, stop }: `done` resolves with the webm blob
 * when the recording ends, by stop() or because the stream's tracks ended.
 */
export function record(stream, mimeType, onStart = null) {
  const opts = { videoBitsPerSecond: VIDEO_BPS };
  if (mimeType) opts.mimeType = mimeType;
  const rec = new MediaRecorder(stream, opts);
  const chunks = [];
  rec.addEventListener('dataavailable', (e) => {
    if (e.data && e.data.size) chunks.push(e.data);
  });
  if (onStart) rec.addEventListener('start', onStart);
  const done = new Promise((resolve, reject) => {
    rec.addEventListener('stop', () => resolve(new Blob(chunks, { type: (rec.mimeType || 'video/webm').split(';')[0] })));
    rec.addEventListener('error', (e) => reject(e.error || new Error('The recording failed.')));
  });
  rec.start(1000); // a chunk a second: a long recording is not one growing buffer inside the encoder
  return {
    mimeType: rec.mimeType || mimeType || 'video/webm',
    done,
    stop() {
      if (rec.state !== 'inactive') rec.stop();
      return done;
    },
  };
}
