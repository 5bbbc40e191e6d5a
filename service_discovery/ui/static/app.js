// The dashboard: a header with this replica's state, and two views chosen by the URL's hash:
// `#/` the services, `#/service/<name>` one service. Each open view follows the registry with
// one blocking query (api.watch); nothing polls.

import {connectionState, events, token, write} from './api.js';
import {askToken} from './dialogs.js';
import {h} from './dom.js';
import {duration} from './format.js';
import {listView} from './list.js';
import {serviceView} from './service.js';

const byId = (id) => document.getElementById(id);
const main = byId('main');
let view = null; // the open view: {stop()}

function route() {
  view?.stop();
  main.replaceChildren();
  const match = /^#\/service\/([^/?#]+)$/.exec(location.hash);
  let name = null;
  try {
    name = match ? decodeURIComponent(match[1]) : null;
  } catch {
    name = match[1]; // not valid percent-encoding: shown as typed, and not found
  }
  view = name === null ? listView(main, context) : serviceView(main, name, context);
}

// ---- what views share: notices and the header's state -----------------------------------
const notices = byId('notices');

/** A short message under the header; tone 'error' stays until dismissed. */
function notify(text, tone = 'ok') {
  const close = h('button', {type: 'button', class: 'link', 'aria-label': 'Dismiss'}, '×');
  const note = h('p', {class: 'notice', dataset: {tone}, role: tone === 'error' ? 'alert' : null},
    h('span', {}, text), close);
  close.addEventListener('click', () => note.remove());
  notices.append(note);
  if (tone !== 'error') setTimeout(() => note.remove(), 6000);
}

function badge(id, text, tone) {
  const el = byId(id);
  el.textContent = text;
  el.dataset.tone = tone;
}

let readyAt = 0;
let readyTimer = null;

/** Read /ready for the header (at most once a second, however often views ask). */
function refreshState() {
  const wait = readyAt + 1000 - Date.now();
  if (wait > 0) {
    readyTimer ??= setTimeout(() => { readyTimer = null; refreshState(); }, wait);
    return;
  }
  readyAt = Date.now();
  fetchState();
}

async function fetchState() {
  let state;
  try {
    const res = await fetch(new URL('../ready', document.baseURI), {cache: 'no-store'});
    state = await res.json();
  } catch {
    state = null;
  }
  if (typeof state?.ready !== 'boolean' || typeof state.version !== 'number') {
    badge('ready', state === null ? 'daemon unreachable' : 'state unknown', 'bad');
    badge('database', 'database unknown', 'wait');
    return;
  }
  if (state.draining) badge('ready', 'draining', 'warn');
  else badge('ready', state.ready ? 'ready' : 'not ready', state.ready ? 'ok' : 'bad');
  if (state.database === 'up') badge('database', 'database connected', 'ok');
  else {
    const stale = state.stale_seconds > 0 ? `, copy ${duration(state.stale_seconds)} old` : '';
    badge('database', `database unavailable${stale}`, 'bad');
  }
  badge('version', `version ${state.version.toLocaleString('en')}`, 'plain');
}

function showConnection() {
  const state = connectionState();
  const text = {connecting: 'connecting…', live: 'live', reconnecting: 'reconnecting…',
    token: 'token needed'}[state];
  badge('live', text, {live: 'ok', reconnecting: 'bad', token: 'warn'}[state] ?? 'wait');
  refreshState();
}

function showToken() {
  byId('token-state').hidden = !token.get();
}

/** A read was refused (401): ask for a token (a stored one was wrong: say so). */
async function askForReads(err) {
  const refused = token.get();
  if (refused) token.clear();
  const given = await askToken(refused
    ? `The token was refused: ${err.describe()}. Enter another one.`
    : `Reading this registry needs a bearer token: ${err.describe()}.`);
  if (given) token.set(given);
}

const context = {
  notify,
  refreshState,
  askForReads,
  write: (method, path) => write(method, path, askToken),
};

events.addEventListener('connection', showConnection);
events.addEventListener('token', showToken);
byId('forget-token').addEventListener('click', () => {
  token.clear();
  notify('Token forgotten.');
});
addEventListener('hashchange', route);
showToken();
route();
refreshState();
