// REST API v1 client. Every error becomes an ApiError carrying the server's message.

export class ApiError extends Error {
  constructor(status, code, message, retryAfter = null) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

export class Api {
  constructor(base = '', token = '') {
    this.base = base.replace(/\/$/, '');
    this.token = token;
  }

  async request(method, path, body, { url = null, timeoutMs = 20000 } = {}) {
    const headers = { Accept: 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), timeoutMs);
    let res;
    try {
      res = await fetch(url || this.base + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: ctl.signal,
      });
    } catch (e) {
      const why = e.name === 'AbortError' ? 'timed out' : 'unreachable';
      throw new ApiError(0, 'network', `The server is ${why}. Check your connection.`);
    } finally {
      clearTimeout(timer);
    }
    if (res.status === 204) return null;
    let data = null;
    try {
      data = await res.json();
    } catch {
      data = null;
    }
    if (!res.ok) {
      const err = data && data.error ? data.error : {};
      const retry = Number.parseFloat(res.headers.get('Retry-After'));
      throw new ApiError(
        res.status,
        err.code || 'error',
        err.message || `${method} ${path} failed with HTTP ${res.status}`,
        Number.isFinite(retry) ? retry : null,
      );
    }
    return data;
  }

  health() {
    return this.request('GET', '/healthz');
  }

  // The preset this node serves; `prompts` (edit name -> prompts, canonical first) or null for any prompt.
  model() {
    return this.request('GET', '/v1/model');
  }

  // How the served model understands a prompt: { known, edit, canonical, score } for a fixed-vocabulary model
  // (known false: the video passes through unchanged), { known: true, open_vocabulary: true } for any prompt.
  // Public, like model(). An older server answers 404 or 405.
  matchPrompt(prompt) {
    return this.request('POST', '/v1/model/match', { prompt }, { timeoutMs: 5000 });
  }

  // GET /readyz, its body whatever the status (503 while the workers load or compile: the body says how far).
  async ready() {
    const headers = { Accept: 'application/json' };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), 5000);
    try {
      const res = await fetch(`${this.base}/readyz`, { headers, signal: ctl.signal });
      const body = await res.json().catch(() => null);
      return { ok: res.ok, status: res.status, body };
    } catch {
      return { ok: false, status: 0, body: null };
    } finally {
      clearTimeout(timer);
    }
  }

  createSession(params) {
    return this.request('POST', '/v1/sessions', params);
  }

  offer(sessionId, sdp, offerUrl = null) {
    const path = `/v1/sessions/${encodeURIComponent(sessionId)}/offer`;
    return this.request('POST', path, { sdp, type: 'offer' }, { url: offerUrl, timeoutMs: 30000 });
  }

  getSession(sessionId) {
    return this.request('GET', `/v1/sessions/${encodeURIComponent(sessionId)}`, undefined, {
      timeoutMs: 5000,
    });
  }

  patchSession(sessionId, changes) {
    return this.request('PATCH', `/v1/sessions/${encodeURIComponent(sessionId)}`, changes);
  }

  deleteSession(sessionId) {
    return this.request('DELETE', `/v1/sessions/${encodeURIComponent(sessionId)}`, undefined, {
      timeoutMs: 5000,
    });
  }
}

// Human message for an error, with the hint the person needs to act on it.
export function describeError(e) {
  if (e instanceof ApiError) {
    switch (e.status) {
      case 401:
        return `Access token needed: ${e.message}. Enter the server's token below and press Start.`;
      case 503:
        return `The server is full or not ready: ${e.message}.` +
          (e.retryAfter != null ? ` Retrying in ${Math.ceil(e.retryAfter)} s.` : '');
      case 429:
        return `Too many wrong access tokens were sent from your address: ${e.message}. Check the token below.` +
          (e.retryAfter != null ? ` Retrying in ${Math.ceil(e.retryAfter)} s.` : '');
      case 0:
        return e.message;
      default:
        return `${e.message} (HTTP ${e.status})`;
    }
  }
  if (e && e.name === 'NotAllowedError') {
    return 'Camera access was denied. Allow the camera for this site in the browser, then press Start.';
  }
  if (e && (e.name === 'NotFoundError' || e.name === 'OverconstrainedError')) {
    return 'No usable camera was found. Connect a camera or pick another one, then press Start.';
  }
  if (e && e.name === 'NotReadableError') {
    return 'The camera is busy in another application. Close it there, then press Start.';
  }
  return (e && e.message) || String(e);
}
