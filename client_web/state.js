// The page's state: one plain object, made once by app.js (createApp) and passed to the functions that need
// it; no module keeps state of its own. Each part is written by the module named beside it and read by others.

import { Api } from './api.js';

/** A fresh state: nothing running, no session, no model info yet. */
export function createState() {
  return {
    // session.js: the session the person wants and its connection
    running: false, // the person wants a live session (Start … Stop)
    stream: null, // the webcam's MediaStream (camera.js opens and closes it)
    camera: { fps: null, openedFps: null }, // camera.js: the frame rate the camera was asked for (now, at open)
    pc: null, // the RTCPeerConnection of the current session
    session: null, // the session JSON (POST, then each poll merged in)
    offerSeq: 0, // bumped by each connect/teardown: answers of an older attempt are ignored
    attempt: 0, // reconnection attempts since the last frame arrived
    timers: { retry: null, poll: null, disc: null, patch: null },
    pollRequest: null, // session.js: the GET of the session in flight (teardown lets it answer first)
    pendingPrompt: null, // a prompt sent but not yet active in the session's stats
    framesSeen: false, // an edited frame was decoded on this connection
    connState: 'idle', // the status pill's state (status.js)
    savedCamera: '', // settings.js: the camera chosen last time, until the camera list is known
    // stats.js: the live numbers
    stats: { hist: [], smooth: {}, lastSession: null, lastClient: null, mask: null },
    // recording.js: the recording in progress ({ handle, source, startedAt, started, timer, sideBySide }) and
    // what the last one saved (window.__lipar.recording())
    rec: { current: null, last: null },
    // model.js: GET /v1/model, once it answered
    model: null,
    // prompts.js: the check of the prompt in the field (debounce timer, newest request, endpoint there or not)
    promptCheck: { timer: null, seq: 0, supported: null },
    // warmup.js: the /readyz watch while the model warms up
    warmup: { timer: null, since: 0, progress: null, mode: null },
  };
}

/** The page's context: the REST client and the state. */
export function createApp() {
  return { api: new Api(''), st: createState() };
}
