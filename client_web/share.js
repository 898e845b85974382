// "Copy viewer link": while the session streams, a link to its read-only viewer page (`/view/{id}`, e.g. an OBS
// browser source) on the node that owns the session, with `#token=` when the page has a token (the fragment
// never reaches a server; the viewer page takes it as this page does).

import { ui } from './dom.js';

/** The viewer page's address for the current session (the session's `viewer_url`; from an older server, its
 * `offer_url`'s origin and /view/{id}), or null. */
export function viewerLink({ api, st }) {
  const session = st.session;
  if (!session) return null;
  let u;
  try {
    if (session.viewer_url) u = new URL(session.viewer_url, location.href);
    else u = new URL(`/view/${encodeURIComponent(session.id)}`, new URL(session.offer_url || '/', location.href));
  } catch {
    u = new URL(`/view/${encodeURIComponent(session.id)}`, location.href);
  }
  if (api.token) u.hash = new URLSearchParams({ token: api.token }).toString();
  return u.href;
}

/** The button shows while edited frames arrive; the link field goes with it. */
export function syncShare(app) {
  const live = Boolean(app.st.session && app.st.framesSeen);
  ui.copyLink.hidden = !live;
  if (!live) {
    ui.share.hidden = true;
    ui.viewerLink.value = '';
    ui.shareNote.textContent = '';
  }
}

/** Copy the link to the clipboard; the field shows it too, selected (to copy by hand where the browser refuses). */
export async function copyViewerLink(app) {
  const link = viewerLink(app);
  if (!link) return;
  ui.viewerLink.value = link;
  ui.share.hidden = false;
  try {
    await navigator.clipboard.writeText(link);
    ui.shareNote.textContent = '· copied';
  } catch {
    ui.viewerLink.focus();
    ui.viewerLink.select();
    ui.shareNote.textContent = '· press Ctrl+C (or ⌘C) to copy it';
  }
}
