// The registry's HTTP API as the page uses it: calls with the bearer token, errors as values,
// and blocking queries (`?index=&wait=`): one waiting request per open view, never a poll.

import {serverDate} from './format.js';

const WAIT = '10s'; // a watch returns at least this often, so the header's /ready stays fresh
const TOKEN = 'service-discovery-token';

export class ApiError extends Error {
  constructor(status, code, message, index) {
    super(message);
    this.status = status; // 0: no answer at all (the daemon is unreachable)
    this.code = code;
    this.index = index; // X-Index of an error answer (a deleted service's), or null
  }

  /** "database unavailable (503)": what to tell a person. */
  describe() {
    return this.status ? `${this.message} (${this.status})` : this.message;
  }
}

// ---- the token: this tab only -----------------------------------------------------------
export const token = {
  get: () => sessionStorage.getItem(TOKEN),
  set(value) {
    sessionStorage.setItem(TOKEN, value);
    tokenWaiters.splice(0).forEach((resolve) => resolve());
    events.dispatchEvent(new Event('token'));
  },
  clear() {
    sessionStorage.removeItem(TOKEN);
    events.dispatchEvent(new Event('token'));
  },
};
const tokenWaiters = [];

/** Resolves when a token is set (a view whose reads were refused waits for it). */
export const tokenSet = () => new Promise((resolve) => tokenWaiters.push(resolve));

// ---- connection state: 'connecting', 'live', 'reconnecting', 'token' ----------------------
export const events = new EventTarget();
let connection = 'connecting';
export const connectionState = () => connection;

function setConnection(state) {
  if (state === connection) return;
  connection = state;
  events.dispatchEvent(new Event('connection'));
}

// ---- calls ------------------------------------------------------------------------------
/** The page is /ui/: the API is one level up (also behind a proxy that adds a prefix). */
export const apiUrl = (path) => new URL(`..${path}`, document.baseURI).href;

/** One call; resolves to the Response when it is 2xx, else throws ApiError. */
export async function call(method, path, {signal} = {}) {
  const headers = {};
  const bearer = token.get();
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  let res;
  try {
    res = await fetch(apiUrl(path), {method, headers, signal, cache: 'no-store'});
  } catch (err) {
    if (signal?.aborted) throw err;
    throw new ApiError(0, 'unreachable', 'the daemon does not answer', null);
  }
  serverDate(res.headers.get('Date'));
  if (res.ok) return res;
  let body = {};
  try {
    body = await res.json();
  } catch {
    // not a JSON error (a proxy's page): the status says enough
  }
  const index = res.headers.get('X-Index');
  throw new ApiError(res.status, body.error ?? 'http_error', body.message ?? res.statusText,
    index === null ? null : Number(index));
}

export async function getJson(path, options) {
  const res = await call('GET', path, options);
  return {body: await res.json(), index: Number(res.headers.get('X-Index'))};
}

const sleep = (ms, signal) => new Promise((resolve) => {
  const timer = setTimeout(resolve, ms);
  signal.addEventListener('abort', () => { clearTimeout(timer); resolve(); }, {once: true});
});

/**
 * Follow `path` with blocking queries until `signal` aborts: `onData(body, index)` for every
 * answer (also when a wait ends with nothing new: a lapsed lease changes a service without
 * moving its index), `onError(ApiError)` for an answer that is an error (a deleted service's
 * 404, which carries the index to wait on). A daemon that does not answer is retried with
 * backoff; after that the watch starts over (a restarted daemon may hold another index).
 * A 401 waits for a token (`onError` shows why).
 */
export async function watch(path, {signal, onData, onError}) {
  let index = null;
  let delay = 500;
  while (!signal.aborted) {
    const query = index === null ? '' : `?index=${index}&wait=${WAIT}`;
    try {
      const {body, index: next} = await getJson(path + query, {signal});
      setConnection('live');
      delay = 500;
      index = next;
      onData(body, next);
    } catch (caught) {
      if (signal.aborted) return;
      // an answer that is not the API's (a proxy's page instead of JSON) counts as no answer
      const err = caught instanceof ApiError
        ? caught
        : new ApiError(0, 'bad_answer', `an answer the page cannot read (${caught})`, null);
      if (err.status === 401) {
        setConnection('token');
        onError(err);
        await Promise.race([tokenSet(), sleep(3600e3, signal)]);
        continue;
      }
      if (err.status === 404 || err.status === 400) {
        setConnection('live');
        index = err.index ?? 0; // wait for it to appear
        onError(err);
        if (err.status === 400) return;
        continue;
      }
      // unreachable, 503 (not loaded yet), 429 (too many watches from here), 5xx
      setConnection('reconnecting');
      onError(err);
      index = null;
      await sleep(delay * (0.5 + Math.random()), signal);
      delay = Math.min(delay * 2, 5000);
    }
  }
}

/** A write; a 401 asks for a token (`askToken(message)` resolves to it, or null) and tries
 * again. Resolves to true when done, false when the user gave up; other errors throw. */
export async function write(method, path, askToken) {
  for (;;) {
    try {
      await call(method, path);
      return true;
    } catch (err) {
      if (!(err instanceof ApiError) || err.status !== 401) throw err;
      const refused = token.get();
      const message = refused
        ? `The token was refused: ${err.describe()}. Enter another one.`
        : `This registry needs a bearer token for changes: ${err.describe()}.`;
      if (refused) token.clear();
      const given = await askToken(message);
      if (!given) return false;
      token.set(given);
    }
  }
}
