// Webcam capture and the WebRTC peer connection of one session.

// The camera's frame rate when the server has not said what its model sustains (GET /v1/model `input_fps` null,
// or an older server without it), fps.
export const DEFAULT_FPS = 30;

export const CAPTURE = { width: { ideal: 832 }, height: { ideal: 480 }, frameRate: { ideal: DEFAULT_FPS, max: DEFAULT_FPS } };

/** The capture constraints for `fps` frames per second: a faster camera only makes the server decode frames
 * that it then drops. */
export function captureConstraints(fps = DEFAULT_FPS) {
  return { ...CAPTURE, frameRate: { ideal: fps, max: fps } };
}

export async function openCamera(deviceId, fps = DEFAULT_FPS) {
  const video = captureConstraints(fps);
  if (deviceId) video.deviceId = { exact: deviceId };
  const stream = await navigator.mediaDevices.getUserMedia({ video, audio: false });
  for (const track of stream.getVideoTracks()) {
    // Without this hint the browser trades resolution for frame rate under load; the model needs detail.
    track.contentHint = 'detail';
  }
  return stream;
}

export async function listCameras() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return [];
  const devices = await navigator.mediaDevices.enumerateDevices();
  return devices.filter((d) => d.kind === 'videoinput');
}

// Wait until ICE gathering completes (the server does no trickle ICE), or give up after timeoutMs. Also used by
// the viewer page (viewer.js).
export function gatheringDone(pc, timeoutMs = 3000) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(done, timeoutMs);
    function done() {
      clearTimeout(timer);
      pc.removeEventListener('icegatheringstatechange', check);
      resolve();
    }
    function check() {
      if (pc.iceGatheringState === 'complete') done();
    }
    pc.addEventListener('icegatheringstatechange', check);
  });
}

// One sendrecv video transceiver: the webcam goes out, the edited video comes back on it.
export async function connectPeer({ stream, sendOffer, onTrack, onState, iceServers = [] }) {
  const pc = new RTCPeerConnection({ iceServers, bundlePolicy: 'max-bundle' });
  const track = stream.getVideoTracks()[0];
  const transceiver = pc.addTransceiver(track, { direction: 'sendrecv', streams: [stream] });
  try {
    const params = transceiver.sender.getParameters();
    params.degradationPreference = 'maintain-resolution';
    if (params.encodings && params.encodings.length) params.encodings[0].maxFramerate = 30;
    await transceiver.sender.setParameters(params);
  } catch {
    // not every browser lets us set these before negotiation; the defaults work
  }
  pc.addEventListener('track', (ev) => onTrack(ev.streams[0] || new MediaStream([ev.track])));
  pc.addEventListener('connectionstatechange', () => onState(pc.connectionState));
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  await gatheringDone(pc);
  const answer = await sendOffer(pc.localDescription.sdp);
  await pc.setRemoteDescription({ type: 'answer', sdp: answer.sdp });
  return pc;
}

// The numbers the page shows and tests read: inbound (edited) video, outbound (webcam), round trip.
export async function readStats(pc) {
  const out = {
    framesDecoded: 0,
    framesReceived: 0,
    framesDropped: 0,
    framesSent: 0,
    fpsIn: null,
    jitterBufferMs: null,
    jitterBufferDelayS: 0,
    jitterBufferEmitted: 0,
    rttMs: null,
    codec: null,
    width: null,
    height: null,
    bytesReceived: 0,
  };
  if (!pc) return out;
  const report = await pc.getStats();
  const codecs = new Map();
  report.forEach((s) => {
    if (s.type === 'codec') codecs.set(s.id, s.mimeType);
  });
  report.forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') {
      out.framesDecoded = s.framesDecoded || 0;
      out.framesReceived = s.framesReceived || 0;
      out.framesDropped = s.framesDropped || 0;
      out.fpsIn = s.framesPerSecond ?? null;
      out.width = s.frameWidth ?? null;
      out.height = s.frameHeight ?? null;
      out.bytesReceived = s.bytesReceived || 0;
      out.jitterBufferDelayS = s.jitterBufferDelay || 0;
      out.jitterBufferEmitted = s.jitterBufferEmittedCount || 0;
      if (s.jitterBufferEmittedCount) {
        out.jitterBufferMs = (1000 * s.jitterBufferDelay) / s.jitterBufferEmittedCount;
      }
      if (s.codecId && codecs.has(s.codecId)) out.codec = codecs.get(s.codecId);
    } else if (s.type === 'outbound-rtp' && s.kind === 'video') {
      out.framesSent = s.framesSent || 0;
    } else if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') {
      if (s.currentRoundTripTime != null) out.rttMs = 1000 * s.currentRoundTripTime;
    }
  });
  return out;
}
