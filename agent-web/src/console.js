// The supervisor console: signs in once with the admin key for a session cookie (the key is
// never kept), then shows the distributor's live state (a wallboard, agents, calls), the last
// hour's charts, and manages the agents directory and sign-in links, all through the admin
// API. State shows in `document.body.dataset.console` (signed-out, signed-in) so people and
// the test harness read the same thing. Everything put in the page goes in as text.
import uPlot from 'uplot';

const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;

/** At most one `/live` in flight, and one every this often. */
const LIVE_GAP_MS = 300;
const LIVE_POLL_MS = 5000;
const SUMMARY_GAP_MS = 1000;
const SUMMARY_POLL_MS = 30000;
const CHARTS_GAP_MS = 5000;
const CHARTS_POLL_MS = 30000;
/** Another supervisor may change the directory too. */
const DIRECTORY_POLL_MS = 60000;
/** How long the first click of "Sign out" waits for the second. */
const CONFIRM_MS = 5000;
/** Before a reconnect when the server refused the event stream. */
const EVENTS_RETRY_MS = 3000;
const CHART_HEIGHT = 160;
const MINUTE_MS = 60000;
const CHART_MINUTES = 60;
/** Pages of call records read for the charts, at most (1000 each). */
const CHART_PAGES = 20;
/** Until the summary says otherwise. */
const DEFAULT_SERVICE_LEVEL_S = 20;
const POOR_LOSS_PERCENT = 3;
const POOR_JITTER_MS = 40;
const ID_RE = /^[A-Za-z0-9._-]{1,64}$/;
const SKILL_RE = /^[^\s:,]{1,64}$/;
const SESSION_ENDED = 'Your session ended; sign in again.';

/** A response that belongs to a session that is over: nobody shows it. */
class Dropped extends Error {}

/** A refusal or failure, with the problem's `detail`. */
class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

// Bumped at every sign-in and sign-out: answers to an older generation's requests are dropped.
let generation = 0;
let signedIn = false;
let events = null;
let timers = [];
let charts = null;

const view = {
  live: null,
  /** Date.now() when `live` arrived: ticking values add the time since. */
  liveAt: 0,
  summary: null,
  directory: [],
  /** Agent id → { state, reason, at }: when her state last changed, as far as we saw. */
  since: new Map(),
  /** Call-ID → { arrivedAt, answeredAt, state }: local clock estimates. */
  calls: new Map(),
  /** Call-ID → when the event stream said it was answered. */
  answered: new Map(),
  /** Agent id → the timeout that ends the "Confirm sign-out" step. */
  confirming: new Map(),
  /** The last sign-in link issued: { jti, agent, message }. */
  link: null,
  /** Where the board's error line comes from → its text. */
  errors: { live: '', summary: '', events: '' },
};

// ---------------------------------------------------------------- small helpers

function setText(el, text) {
  if (el && el.textContent !== text) el.textContent = text;
}

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

function button(className, text) {
  const b = el('button', className, text);
  b.type = 'button';
  return b;
}

const pad2 = (n) => String(n).padStart(2, '0');

/** "0 s", "45 s", "1 min 05 s", "2 h 03 min". */
function duration(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${pad2(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${pad2(Math.floor(s / 60) % 60)} min`;
}

function hhmm(date) {
  return `${pad2(date.getHours())}:${pad2(date.getMinutes())}`;
}

/** HH:MM today, or with the day when it is another day. */
function until(date) {
  const today = new Date();
  if (date.toDateString() === today.toDateString()) return hhmm(date);
  const day = date.toLocaleDateString(undefined, { weekday: 'short', day: 'numeric', month: 'short' });
  return `${day} ${hhmm(date)}`;
}

function localMidnight() {
  const d = new Date();
  d.setHours(0, 0, 0, 0);
  return d;
}

function serviceLevelS() {
  const s = view.summary && Number(view.summary.service_level_s);
  return Number.isFinite(s) && s > 0 ? s : DEFAULT_SERVICE_LEVEL_S;
}

/** "67 %", or "—" when no call counts yet. */
function serviceLevel(q) {
  if (!q) return '—';
  const divisor = (q.answered || 0) + (q.abandoned || 0) + (q.timed_out || 0);
  if (!divisor) return '—';
  return `${Math.round((100 * (q.answered_in_target || 0)) / divisor)} %`;
}

function formatSkills(skills) {
  return Object.entries(skills || {}).map(([s, l]) => `${s}:${l}`).join(', ');
}

/** "billing:80, support:50" → { skills } or { error }. */
function parseSkills(text) {
  const skills = {};
  const parts = text.split(/[,;\n]/).map((p) => p.trim()).filter((p) => p);
  for (const part of parts) {
    const m = /^([^:]+):\s*(\d+)$/.exec(part);
    if (!m) return { error: `"${part}" is not skill:level (for example billing:80).` };
    const name = m[1].trim();
    const level = Number(m[2]);
    if (!SKILL_RE.test(name)) return { error: `"${name}" is not a skill name (no spaces, up to 64 characters).` };
    if (!Number.isInteger(level) || level < 1 || level > 100) {
      return { error: `The level of ${name} must be 1-100, not ${m[2]}.` };
    }
    if (Object.prototype.hasOwnProperty.call(skills, name)) return { error: `${name} is named twice.` };
    skills[name] = level;
  }
  return { skills };
}

/** Calls `fn` when asked, but never two at once, nor two starts closer than `gapMs`. */
function throttle(fn, gapMs) {
  let inFlight = false;
  let wanted = false;
  let last = -Infinity;
  let timer = null;
  const pump = () => {
    if (!wanted || inFlight || timer) return;
    const wait = last + gapMs - Date.now();
    if (wait > 0) {
      timer = setTimeout(() => {
        timer = null;
        pump();
      }, wait);
      return;
    }
    wanted = false;
    inFlight = true;
    last = Date.now();
    Promise.resolve()
      .then(fn)
      .catch(() => {})
      .finally(() => {
        inFlight = false;
        pump();
      });
  };
  const request = () => {
    wanted = true;
    pump();
  };
  request.reset = () => {
    wanted = false;
    clearTimeout(timer);
    timer = null;
    last = -Infinity;
  };
  return request;
}

/**
 * Puts one child of `container` per key, in order, keyed by `data-<attr>`: existing ones are
 * kept (with their state: a button half-way through a confirmation stays so), new ones made
 * by `create`, the rest removed. Returns the children in order.
 */
function reconcile(container, keys, attr, create, onRemove) {
  const existing = new Map();
  for (const child of [...container.children]) existing.set(child.dataset[attr], child);
  const out = [];
  for (const key of keys) {
    let child = existing.get(key);
    if (child) {
      existing.delete(key);
    } else {
      child = create(key);
      child.dataset[attr] = key;
    }
    out.push(child);
  }
  for (const [key, child] of existing) {
    child.remove();
    if (onRemove) onRemove(key);
  }
  let prev = null;
  for (const child of out) {
    const next = prev ? prev.nextSibling : container.firstChild;
    if (child !== next) container.insertBefore(child, next);
    prev = child;
  }
  return out;
}

// ---------------------------------------------------------------- the API

async function problemDetail(resp) {
  try {
    const p = JSON.parse(await resp.text());
    if (p && (p.detail || p.title)) return String(p.detail || p.title);
  } catch {
    /* not a problem document */
  }
  return `The server answered ${resp.status} ${resp.statusText}`.trim();
}

/**
 * One call to the admin API with the session cookie and the console's header. A 401 means
 * the session is over: the sign-in form comes back and the caller gets `Dropped`.
 */
async function api(method, path, body) {
  const gen = generation;
  const headers = { 'X-AE-Console': '1', Accept: 'application/json' };
  const init = { method, credentials: 'same-origin', headers, cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch {
    if (gen !== generation) throw new Dropped();
    throw new ApiError(0, 'The console cannot reach the server.');
  }
  if (gen !== generation) throw new Dropped();
  if (resp.status === 401) {
    sessionEnded();
    throw new Dropped();
  }
  if (!resp.ok) throw new ApiError(resp.status, await problemDetail(resp));
  const text = await resp.text();
  if (gen !== generation) throw new Dropped();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    throw new ApiError(resp.status, 'The server answered with something that is not JSON.');
  }
}

/** A catch handler that shows what went wrong in `target` (an element or a function). */
function shows(target) {
  return (e) => {
    if (e instanceof Dropped) return;
    const text = e instanceof ApiError ? e.message : `Something went wrong: ${e && e.message}`;
    if (typeof target === 'function') target(text);
    else setText(target, text);
    if (!(e instanceof ApiError)) console.error(e); // eslint-disable-line no-console
  };
}

function boardError(source, text) {
  view.errors[source] = text || '';
  setText($('board-error'), Object.values(view.errors).filter((t) => t).join(' '));
}

// ---------------------------------------------------------------- signing in and out

function showSignIn(message) {
  generation += 1;
  signedIn = false;
  stopBoard();
  document.body.dataset.console = 'signed-out';
  $('board').hidden = true;
  $('signin').hidden = false;
  setText($('signin-error'), message || '');
  $('signin-button').disabled = false;
  $('key').focus();
}

function sessionEnded() {
  if (signedIn) showSignIn(SESSION_ENDED);
}

async function signIn(event) {
  event.preventDefault();
  const key = $('key').value.trim();
  if (!key) {
    setText($('signin-error'), 'Enter the admin key.');
    $('key').focus();
    return;
  }
  setText($('signin-error'), '');
  $('signin-button').disabled = true;
  try {
    const resp = await fetch('/console/session', {
      method: 'POST',
      credentials: 'same-origin',
      cache: 'no-store',
      headers: { 'X-AE-Console': '1', 'Content-Type': 'application/json', Accept: 'application/json' },
      body: JSON.stringify({ key }),
    });
    if (resp.ok) {
      $('key').value = '';
      startBoard();
      return;
    }
    setText($('signin-error'), await problemDetail(resp));
  } catch {
    setText($('signin-error'), 'The console cannot reach the server.');
  }
  $('signin-button').disabled = false;
  $('key').select();
}

async function signOut() {
  $('console-signout').disabled = true;
  let message = '';
  try {
    await api('DELETE', '/console/session');
  } catch (e) {
    if (!(e instanceof Dropped)) message = `Signed out here, but the server was not told: ${e.message}`;
  }
  $('console-signout').disabled = false;
  if (signedIn) showSignIn(message);
}

// ---------------------------------------------------------------- the board's lifecycle

const requestLive = throttle(loadLive, LIVE_GAP_MS);
const requestSummary = throttle(loadSummary, SUMMARY_GAP_MS);
const requestCharts = throttle(loadCharts, CHARTS_GAP_MS);

function every(ms, fn) {
  timers.push(setInterval(fn, ms));
}

function startBoard() {
  generation += 1;
  signedIn = true;
  document.body.dataset.console = 'signed-in';
  $('signin').hidden = true;
  $('board').hidden = false;
  setText($('signin-error'), '');
  $('signin-button').disabled = false;
  ensureCharts();
  connectEvents(generation);
  requestLive();
  requestSummary();
  requestCharts();
  loadDirectory().catch(shows($('directory-error')));
  every(LIVE_POLL_MS, requestLive);
  every(SUMMARY_POLL_MS, requestSummary);
  every(CHARTS_POLL_MS, requestCharts);
  every(DIRECTORY_POLL_MS, () => loadDirectory().catch(shows($('directory-error'))));
  every(1000, tick);
}

/** Forgets everything the last session showed (a sign-in link is a credential). */
function stopBoard() {
  if (events) events.close();
  events = null;
  for (const t of timers) {
    clearInterval(t);
    clearTimeout(t);
  }
  timers = [];
  requestLive.reset();
  requestSummary.reset();
  requestCharts.reset();
  for (const t of view.confirming.values()) clearTimeout(t);
  Object.assign(view, {
    live: null,
    liveAt: 0,
    summary: null,
    directory: [],
    since: new Map(),
    calls: new Map(),
    answered: new Map(),
    confirming: new Map(),
    link: null,
    errors: { live: '', summary: '', events: '' },
  });
  queueWaits.clear();
  $('queues').replaceChildren();
  for (const id of ['agents', 'calls', 'directory']) $(id).tBodies[0].replaceChildren();
  for (const id of ['board-error', 'agents-error', 'agents-status', 'charts-error', 'directory-error',
    'directory-status', 'agent-error', 'agent-saved', 'link-status', 'chart-calls-text', 'chart-sl-text']) {
    setText($(id), '');
  }
  for (const cls of ['available', 'on-call', 'ringing', 'wrap-up', 'away', 'signed-in']) {
    setText($('agents-summary').querySelector(`.${cls}`), '0');
  }
  $('agent-form').reset();
  showLink();
  setConnection(false);
  if (charts) {
    charts.observer.disconnect();
    charts.calls.destroy();
    charts.sl.destroy();
    charts = null;
  }
}

function setConnection(live) {
  const c = $('connection');
  setText(c, live ? 'live' : 'reconnecting…');
  c.classList.toggle('live', live);
  c.classList.toggle('reconnecting', !live);
}

// ---------------------------------------------------------------- the event stream

function connectEvents(gen) {
  if (gen !== generation) return;
  const es = new EventSource('/events');
  events = es;
  es.onopen = () => {
    if (gen !== generation) return;
    setConnection(true);
    boardError('events', '');
  };
  es.onmessage = (m) => {
    if (gen !== generation) return;
    setConnection(true);
    let ev;
    try {
      ev = JSON.parse(m.data);
    } catch {
      return;
    }
    onEvent(ev);
  };
  es.onerror = () => {
    if (gen !== generation) return;
    setConnection(false);
    if (es.readyState !== EventSource.CLOSED) return; // the browser reconnects by itself
    // The server refused the stream (the session may be over): ask, then try again.
    es.close();
    if (events === es) events = null;
    timers.push(setTimeout(() => reconnectEvents(gen), EVENTS_RETRY_MS));
  };
}

async function reconnectEvents(gen) {
  if (gen !== generation) return;
  try {
    await api('GET', '/console/session');
    connectEvents(gen);
  } catch (e) {
    if (e instanceof Dropped) return;
    boardError('events', 'The live events are not coming through; retrying.');
    timers.push(setTimeout(() => reconnectEvents(gen), EVENTS_RETRY_MS));
  }
}

function onEvent(ev) {
  const now = Date.now();
  switch (ev.type) {
    case 'agent':
      if (typeof ev.agent === 'string' && typeof ev.state === 'string') {
        noteAgentState(ev.agent, ev.state, ev.reason, now);
      }
      // An agent leaving a call: its record is written a second after the hang-up.
      if (ev.state === 'wrap-up' || ev.state === 'available') afterRecords();
      break;
    case 'offer-ended':
      if (ev.result === 'answered' && typeof ev.call === 'string') {
        view.answered.set(ev.call, now);
        const c = view.calls.get(ev.call);
        if (c && c.answeredAt == null) c.answeredAt = now;
      }
      break;
    case 'call-ended':
      requestSummary();
      requestCharts();
      afterRecords();
      break;
    case 'snapshot':
    case 'lagged':
      // A new stream or missed events: whatever happened meanwhile is in the records.
      requestSummary();
      requestCharts();
      break;
    default:
      break;
  }
  requestLive();
}

/** An answered call's record is written about a second after its hang-up (the edge's last
 * media statistics): the summary and the charts are read again once it is there. */
const RECORD_SETTLE_MS = 1600;
let recordsTimer = null;
function afterRecords() {
  clearTimeout(recordsTimer);
  recordsTimer = setTimeout(() => {
    recordsTimer = null;
    if (document.body.dataset.console !== 'signed-in') return;
    requestSummary();
    requestCharts();
  }, RECORD_SETTLE_MS);
}

// ---------------------------------------------------------------- live state

async function loadLive() {
  try {
    const live = await api('GET', '/live');
    view.live = live || {};
    view.liveAt = Date.now();
    boardError('live', '');
    renderLive();
  } catch (e) {
    shows((t) => boardError('live', t))(e);
  }
}

async function loadSummary() {
  try {
    const from = localMidnight().toISOString();
    view.summary = await api('GET', `/calls/summary?from=${enc(from)}`);
    boardError('summary', '');
    renderQueues();
  } catch (e) {
    shows((t) => boardError('summary', `Today's figures: ${t}`))(e);
  }
}

function noteAgentState(id, state, reason, at) {
  const s = view.since.get(id);
  const why = reason || '';
  if (!s || s.state !== state || s.reason !== why) view.since.set(id, { state, reason: why, at });
}

function signedInAgents() {
  const agents = (view.live && Array.isArray(view.live.agents)) ? view.live.agents : [];
  return agents.filter((a) => a && typeof a.id === 'string' && a.state !== 'offline');
}

function liveCalls() {
  const calls = (view.live && Array.isArray(view.live.calls)) ? view.live.calls : [];
  return calls.filter((c) => c && typeof c.call === 'string');
}

function renderLive() {
  const agents = signedInAgents();
  for (const a of agents) noteAgentState(a.id, a.state, a.reason, view.liveAt);
  const present = new Set(agents.map((a) => a.id));
  for (const id of [...view.since.keys()]) if (!present.has(id)) view.since.delete(id);

  const count = (...states) => agents.filter((a) => states.includes(a.state)).length;
  const summary = $('agents-summary');
  setText(summary.querySelector('.available'), String(count('available')));
  setText(summary.querySelector('.on-call'), String(count('on-call')));
  setText(summary.querySelector('.ringing'), String(count('ringing', 'reserved')));
  setText(summary.querySelector('.wrap-up'), String(count('wrap-up')));
  setText(summary.querySelector('.away'), String(count('away')));
  setText(summary.querySelector('.signed-in'), String(agents.length));

  trackCalls();
  renderQueues();
  renderAgents(agents);
  renderCalls();
}

// ---------------------------------------------------------------- wallboard

/** Queue name → { ms, at, ticking }: the longest wait when `/live` said it. */
const queueWaits = new Map();

function currentWait(name) {
  const w = queueWaits.get(name);
  if (!w) return 0;
  return w.ticking ? w.ms + (Date.now() - w.at) : w.ms;
}

function createQueueCard() {
  const card = el('div', 'queue');
  card.append(el('h3', 'name'));
  const dl = el('dl');
  const item = (label, cls, live) => {
    const div = el('div');
    const dd = el('dd', cls, '—');
    if (live) dd.setAttribute('aria-live', 'polite');
    div.append(el('dt', '', label), dd);
    dl.append(div);
  };
  item('Waiting', 'waiting', true);
  item('Offering', 'offering', true);
  item('Longest wait', 'longest-wait', false); // it ticks: announcing it every second would drown the rest
  item('Service level today', 'service-level', true);
  item('Answered today', 'answered-today', true);
  item('Abandoned today', 'abandoned-today', true);
  card.append(dl);
  return card;
}

function renderQueues() {
  const live = (view.live && Array.isArray(view.live.queues)) ? view.live.queues : [];
  const today = (view.summary && Array.isArray(view.summary.queues)) ? view.summary.queues : [];
  const byName = new Map();
  for (const q of live) if (q && typeof q.queue === 'string') byName.set(q.queue, { live: q });
  for (const q of today) {
    if (!q || typeof q.queue !== 'string') continue;
    const entry = byName.get(q.queue) || {};
    entry.today = q;
    byName.set(q.queue, entry);
  }
  const names = [...byName.keys()];
  for (const name of [...queueWaits.keys()]) if (!byName.has(name)) queueWaits.delete(name);
  const cards = reconcile($('queues'), names, 'queue', createQueueCard);
  $('queues-empty').hidden = names.length > 0;
  cards.forEach((card, i) => {
    const name = names[i];
    const { live: q, today: t } = byName.get(name);
    const depth = q ? Number(q.depth) || 0 : 0;
    const offering = q ? Number(q.offering) || 0 : 0;
    if (q) {
      queueWaits.set(name, {
        ms: Number(q.longest_wait_ms) || 0,
        at: view.liveAt,
        ticking: depth + offering > 0,
      });
    } else {
      queueWaits.delete(name);
    }
    setText(card.querySelector('.name'), name);
    setText(card.querySelector('.waiting'), String(depth));
    setText(card.querySelector('.offering'), String(offering));
    setText(card.querySelector('.service-level'), serviceLevel(t));
    setText(card.querySelector('.answered-today'), t ? String(t.answered || 0) : '—');
    setText(card.querySelector('.abandoned-today'), t ? String(t.abandoned || 0) : '—');
    card.classList.toggle('has-waiting', depth > 0);
    tickQueue(card, name);
  });
}

function tickQueue(card, name) {
  const wait = currentWait(name);
  setText(card.querySelector('.longest-wait'), duration(wait));
  card.classList.toggle('over-target', wait > serviceLevelS() * 1000);
}

// ---------------------------------------------------------------- agents

function createAgentRow(id) {
  const tr = el('tr');
  tr.append(el('td', 'id', id), el('td', 'state'), el('td', 'since'), el('td', 'call'), el('td', 'edge'));
  const actions = el('td', 'actions');
  const away = button('set-away', 'Away');
  away.setAttribute('aria-label', `Set ${id} away`);
  const available = button('set-available', 'Available');
  available.setAttribute('aria-label', `Set ${id} available`);
  const out = button('sign-out', 'Sign out');
  actions.append(away, available, out);
  tr.append(actions);
  return tr;
}

function renderAgents(agents) {
  const sorted = [...agents].sort((a, b) => a.id.localeCompare(b.id));
  const byId = new Map(sorted.map((a) => [a.id, a]));
  const rows = reconcile($('agents').tBodies[0], sorted.map((a) => a.id), 'agent', createAgentRow, (id) => {
    clearTimeout(view.confirming.get(id));
    view.confirming.delete(id);
  });
  $('agents-empty').hidden = sorted.length > 0;
  const calls = liveCalls();
  for (const tr of rows) {
    const a = byId.get(tr.dataset.agent);
    tr.className = `state-${a.state}`;
    setText(tr.querySelector('.state'), a.reason ? `${a.state} (${a.reason})` : String(a.state));
    const mine = calls
      .filter((c) => c.agent === a.id && (c.state === 'connected' || c.state === 'offered'))
      .sort((x, y) => (x.state === 'connected' ? 0 : 1) - (y.state === 'connected' ? 0 : 1))
      .map((c) => c.call);
    const call = tr.querySelector('.call');
    setText(call, mine.join(', '));
    if (mine.length) call.title = mine.join(', ');
    else call.removeAttribute('title');
    setText(tr.querySelector('.edge'), a.edge || '');
    tr.dataset.token = typeof a.token === 'string' ? a.token : '';
    renderSignOut(tr);
    tickAgent(tr);
  }
}

function renderSignOut(tr) {
  const id = tr.dataset.agent;
  const b = tr.querySelector('.sign-out');
  const confirming = view.confirming.has(id);
  b.disabled = !tr.dataset.token;
  b.title = tr.dataset.token ? '' : 'Her edge did not say which token she signed in with';
  b.classList.toggle('confirm', confirming);
  setText(b, confirming ? 'Confirm sign-out' : 'Sign out');
  b.setAttribute('aria-label', confirming ? `Confirm sign-out of ${id}` : `Sign ${id} out`);
}

function tickAgent(tr) {
  const s = view.since.get(tr.dataset.agent);
  setText(tr.querySelector('.since'), s ? duration(Date.now() - s.at) : '');
}

function agentStatus(text) {
  setText($('agents-error'), '');
  setText($('agents-status'), text);
}

async function setPresence(id, presence, done) {
  setText($('agents-error'), '');
  setText($('agents-status'), '');
  try {
    await api('PUT', `/agents/${enc(id)}/presence`, presence);
    agentStatus(done);
    requestLive();
  } catch (e) {
    shows($('agents-error'))(e);
  }
}

async function signAgentOut(tr) {
  const id = tr.dataset.agent;
  const b = tr.querySelector('.sign-out');
  if (!view.confirming.has(id)) {
    view.confirming.set(id, setTimeout(() => {
      view.confirming.delete(id);
      if (tr.isConnected) renderSignOut(tr);
    }, CONFIRM_MS));
    renderSignOut(tr);
    return;
  }
  clearTimeout(view.confirming.get(id));
  view.confirming.delete(id);
  renderSignOut(tr);
  const jti = tr.dataset.token;
  if (!jti) return;
  setText($('agents-error'), '');
  setText($('agents-status'), '');
  b.disabled = true;
  try {
    await api('POST', '/tokens/revoke', { jti });
    agentStatus(`Signed ${id} out (her token is revoked).`);
    requestLive();
  } catch (e) {
    shows($('agents-error'))(e);
  } finally {
    if (tr.isConnected) renderSignOut(tr);
  }
}

function onAgentsClick(event) {
  const b = event.target.closest('button');
  const tr = b && b.closest('tr[data-agent]');
  if (!tr || b.disabled) return;
  const id = tr.dataset.agent;
  if (b.classList.contains('set-away')) {
    setPresence(id, { state: 'away', reason: 'Supervisor' }, `${id} is set away.`);
  } else if (b.classList.contains('set-available')) {
    setPresence(id, { state: 'available' }, `${id} is set available.`);
  } else if (b.classList.contains('sign-out')) {
    signAgentOut(tr);
  }
}

// ---------------------------------------------------------------- calls

const CALL_ORDER = { queued: 0, offered: 1, connected: 2 };

/** Arrival and answer times on our clock, for the waits that tick. */
function trackCalls() {
  const seen = new Set();
  for (const c of liveCalls()) {
    seen.add(c.call);
    let t = view.calls.get(c.call);
    const waited = Number(c.waited_ms) || 0;
    const heard = view.answered.get(c.call);
    if (!t) {
      // First seen connected: its answer is known only if the event stream told it.
      t = { arrivedAt: view.liveAt - waited, answeredAt: heard ?? null, state: c.state };
      view.calls.set(c.call, t);
    } else if (c.state === 'connected' && t.answeredAt == null) {
      t.answeredAt = heard ?? (t.state !== 'connected' ? view.liveAt : null);
    }
    if (c.state !== 'connected') t.answeredAt = null;
    t.state = c.state;
  }
  for (const id of [...view.calls.keys()]) if (!seen.has(id)) view.calls.delete(id);
  const old = Date.now() - MINUTE_MS;
  for (const [id, at] of [...view.answered]) if (at < old && !seen.has(id)) view.answered.delete(id);
}

function createCallRow(id) {
  const tr = el('tr');
  const cell = el('td', 'call-id', id);
  cell.title = id;
  tr.append(cell, el('td', 'state'), el('td', 'queue'), el('td', 'agent'), el('td', 'waited'), el('td', 'quality'));
  return tr;
}

function lossPercent(flow) {
  const packets = Number(flow && flow.packets) || 0;
  const lost = Number(flow && flow.lost) || 0;
  return packets + lost > 0 ? (100 * lost) / (packets + lost) : 0;
}

/** The audio cell's text and classes for a call's media statistics. */
function quality(media) {
  if (!media || typeof media !== 'object') return { text: '—', poor: false, oneWay: false };
  if (media.one_way) {
    const which = { 'caller-silent': 'caller silent', 'agent-silent': 'agent silent' }[media.one_way]
      || String(media.one_way);
    return { text: `one-way: ${which}`, poor: false, oneWay: true };
  }
  const lossIn = lossPercent(media.from_caller);
  const lossOut = lossPercent(media.from_agent);
  const jitter = Math.max(Number(media.from_caller && media.from_caller.jitter_ms) || 0,
    Number(media.from_agent && media.from_agent.jitter_ms) || 0);
  return {
    text: `in ${lossIn.toFixed(1)} % / out ${lossOut.toFixed(1)} %, ${Math.round(jitter)} ms`,
    poor: lossIn > POOR_LOSS_PERCENT || lossOut > POOR_LOSS_PERCENT || jitter > POOR_JITTER_MS,
    oneWay: false,
  };
}

function renderCalls() {
  const calls = liveCalls().sort((a, b) => ((CALL_ORDER[a.state] ?? 3) - (CALL_ORDER[b.state] ?? 3))
    || ((Number(b.waited_ms) || 0) - (Number(a.waited_ms) || 0)));
  const byId = new Map(calls.map((c) => [c.call, c]));
  const rows = reconcile($('calls').tBodies[0], [...byId.keys()], 'call', createCallRow);
  $('calls-empty').hidden = rows.length > 0;
  for (const tr of rows) {
    const c = byId.get(tr.dataset.call);
    const q = quality(c.media);
    tr.className = `state-${c.state}`;
    tr.classList.toggle('one-way', q.oneWay);
    tr.classList.toggle('poor', q.poor);
    setText(tr.querySelector('.state'), String(c.state));
    setText(tr.querySelector('.queue'), String(c.queue || ''));
    setText(tr.querySelector('.agent'), typeof c.agent === 'string' ? c.agent : '');
    const cell = tr.querySelector('.quality');
    setText(cell, q.text);
    cell.title = c.media ? 'in: caller → agent; out: agent → caller; jitter: the worse way' : '';
    tickCall(tr);
  }
}

function tickCall(tr) {
  const t = view.calls.get(tr.dataset.call);
  const cell = tr.querySelector('.waited');
  if (!t) return;
  if (t.state !== 'connected') {
    setText(cell, duration(Date.now() - t.arrivedAt));
    cell.removeAttribute('title');
  } else if (t.answeredAt != null) {
    setText(cell, duration(t.answeredAt - t.arrivedAt));
    cell.removeAttribute('title');
  } else {
    setText(cell, '—');
    cell.title = 'Answered before the console saw it waiting';
  }
}

// ---------------------------------------------------------------- the clock

function tick() {
  for (const card of $('queues').children) tickQueue(card, card.dataset.queue);
  for (const tr of $('agents').tBodies[0].rows) tickAgent(tr);
  for (const tr of $('calls').tBodies[0].rows) tickCall(tr);
}

// ---------------------------------------------------------------- charts

function chartWidth(target) {
  return Math.max(240, Math.floor(target.clientWidth || 480));
}

function ensureCharts() {
  if (charts) return;
  const time = () => ({ value: (u, v) => (v == null ? '—' : hhmm(new Date(v * 1000))) });
  const count = (u, v) => (v == null ? '—' : String(v));
  const callsTarget = $('chart-calls');
  const slTarget = $('chart-sl');
  const bars = uPlot.paths.bars({ size: [0.8, 24] });
  const calls = new uPlot({
    width: chartWidth(callsTarget),
    height: CHART_HEIGHT,
    cursor: { drag: { x: false, y: false } },
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(4, Math.ceil((max || 0) * 1.15))] } },
    axes: [
      { stroke: '#57606a', grid: { stroke: '#eaeef2' } },
      { stroke: '#57606a', grid: { stroke: '#eaeef2' }, size: 40, incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] },
    ],
    series: [
      time(),
      { label: 'Calls', stroke: '#0969da', fill: 'rgba(9, 105, 218, 0.35)', width: 1, paths: bars, points: { show: false }, value: count },
      { label: 'Not answered', stroke: '#cf222e', fill: 'rgba(207, 34, 46, 0.6)', width: 1, paths: bars, points: { show: false }, value: count },
    ],
  }, [[], [], []], callsTarget);
  const sl = new uPlot({
    width: chartWidth(slTarget),
    height: CHART_HEIGHT,
    cursor: { drag: { x: false, y: false } },
    scales: { x: { time: true }, y: { range: [0, 100] } },
    axes: [
      { stroke: '#57606a', grid: { stroke: '#eaeef2' } },
      { stroke: '#57606a', grid: { stroke: '#eaeef2' }, size: 56, values: (u, vals) => vals.map((v) => `${v} %`) },
    ],
    series: [
      time(),
      {
        label: 'Service level',
        stroke: '#1f883d',
        width: 2,
        spanGaps: false,
        points: { show: true, size: 5, fill: '#1f883d' },
        value: (u, v) => (v == null ? '—' : `${Math.round(v)} %`),
      },
    ],
  }, [[], []], slTarget);
  const observer = new ResizeObserver(() => {
    if (!charts) return;
    for (const [chart, target] of [[charts.calls, callsTarget], [charts.sl, slTarget]]) {
      const width = chartWidth(target);
      if (chart.width !== width) chart.setSize({ width, height: CHART_HEIGHT });
    }
  });
  observer.observe(callsTarget);
  observer.observe(slTarget);
  charts = { calls, sl, observer };
}

async function loadCharts() {
  try {
    const now = Date.now();
    const start = Math.floor(now / MINUTE_MS) * MINUTE_MS - (CHART_MINUTES - 1) * MINUTE_MS;
    const from = new Date(start).toISOString();
    const records = [];
    let cursor = null;
    for (let page = 0; page < CHART_PAGES; page += 1) {
      let url = `/calls?from=${enc(from)}&limit=1000`;
      if (cursor) url += `&cursor=${enc(cursor)}`;
      const body = await api('GET', url);
      if (body && Array.isArray(body.calls)) records.push(...body.calls);
      cursor = body && body.next;
      if (!cursor) break;
    }
    drawCharts(start, records);
    setText($('charts-error'), '');
  } catch (e) {
    shows($('charts-error'))(e);
  }
}

function drawCharts(start, records) {
  if (!charts) return;
  const targetMs = serviceLevelS() * 1000;
  const xs = [];
  const total = [];
  const missed = [];
  const hit = [];
  const counted = [];
  for (let i = 0; i < CHART_MINUTES; i += 1) {
    xs.push((start + i * MINUTE_MS) / 1000);
    total.push(0);
    missed.push(0);
    hit.push(0);
    counted.push(0);
  }
  for (const r of records) {
    const t = Date.parse(r && r.arrived);
    if (!Number.isFinite(t)) continue;
    const i = Math.floor((t - start) / MINUTE_MS);
    if (i < 0 || i >= CHART_MINUTES) continue;
    total[i] += 1;
    if (r.outcome !== 'answered') missed[i] += 1;
    if (r.outcome === 'answered' || r.outcome === 'abandoned' || r.outcome === 'timed-out') counted[i] += 1;
    if (r.outcome === 'answered' && Number(r.wait_ms) <= targetMs) hit[i] += 1;
  }
  const sl = counted.map((n, i) => (n ? (100 * hit[i]) / n : null));
  charts.calls.setData([xs, total, missed]);
  charts.sl.setData([xs, sl]);
  const calls = total.reduce((a, b) => a + b, 0);
  const notAnswered = missed.reduce((a, b) => a + b, 0);
  setText($('chart-calls-text'), `${calls} call${calls === 1 ? '' : 's'} in the last hour, ${notAnswered} not answered.`);
  const n = counted.reduce((a, b) => a + b, 0);
  const h = hit.reduce((a, b) => a + b, 0);
  setText($('chart-sl-text'), n
    ? `${Math.round((100 * h) / n)} % over the hour answered within ${serviceLevelS()} s.`
    : `No calls to measure in the last hour (target: answered within ${serviceLevelS()} s).`);
}

// ---------------------------------------------------------------- the directory

async function loadDirectory() {
  const list = await api('GET', '/agents');
  view.directory = Array.isArray(list) ? list.filter((a) => a && typeof a.id === 'string') : [];
  renderDirectory();
}

function createDirectoryRow(id) {
  const tr = el('tr');
  tr.append(el('td', 'id', id), el('td', 'name'), el('td', 'skills'), el('td', 'max-calls'));
  const actions = el('td', 'actions');
  const edit = button('edit', 'Edit');
  edit.setAttribute('aria-label', `Edit ${id}`);
  const link = button('issue-link', 'Sign-in link');
  link.setAttribute('aria-label', `Sign-in link for ${id}`);
  const del = button('delete danger', 'Delete');
  del.setAttribute('aria-label', `Delete ${id}`);
  actions.append(edit, link, del);
  tr.append(actions);
  return tr;
}

function renderDirectory() {
  const agents = [...view.directory].sort((a, b) => a.id.localeCompare(b.id));
  const byId = new Map(agents.map((a) => [a.id, a]));
  const rows = reconcile($('directory').tBodies[0], [...byId.keys()], 'agent', createDirectoryRow);
  $('directory-empty').hidden = rows.length > 0;
  for (const tr of rows) {
    const a = byId.get(tr.dataset.agent);
    setText(tr.querySelector('.name'), String(a.name || ''));
    setText(tr.querySelector('.skills'), formatSkills(a.skills));
    setText(tr.querySelector('.max-calls'), String(a.max_calls ?? 1));
  }
}

function directoryMessage(status, error) {
  setText($('directory-status'), status || '');
  setText($('directory-error'), error || '');
}

function editAgent(id) {
  const a = view.directory.find((x) => x.id === id);
  if (!a) return;
  $('agent-id').value = a.id;
  $('agent-name').value = a.name || '';
  $('agent-skills').value = formatSkills(a.skills);
  $('agent-max-calls').value = String(a.max_calls ?? 1);
  setText($('agent-error'), '');
  setText($('agent-saved'), '');
  $('agent-form').scrollIntoView({ block: 'nearest' });
  $('agent-name').focus();
}

async function saveAgent(event) {
  event.preventDefault();
  const error = $('agent-error');
  setText(error, '');
  setText($('agent-saved'), '');
  const id = $('agent-id').value.trim();
  if (!ID_RE.test(id)) {
    setText(error, 'The id must be 1-64 letters, digits, ".", "_" or "-".');
    $('agent-id').focus();
    return;
  }
  const name = $('agent-name').value.trim() || id;
  const parsed = parseSkills($('agent-skills').value);
  if (parsed.error) {
    setText(error, `Skills: ${parsed.error}`);
    $('agent-skills').focus();
    return;
  }
  const maxText = $('agent-max-calls').value.trim();
  const max = maxText === '' ? 1 : Number(maxText);
  if (!Number.isInteger(max) || max < 1 || max > 100) {
    setText(error, 'Calls at once must be a whole number from 1 to 100.');
    $('agent-max-calls').focus();
    return;
  }
  const body = { id, name, skills: parsed.skills, max_calls: max };
  const exists = view.directory.some((a) => a.id === id);
  $('agent-save').disabled = true;
  try {
    if (exists) await api('PUT', `/agents/${enc(id)}`, body);
    else await api('POST', '/agents', body);
    try {
      await loadDirectory();
      directoryMessage('', '');
    } catch (e) {
      shows($('directory-error'))(e);
    }
    $('agent-form').reset();
    setText($('agent-saved'), `Saved ${id}.`);
  } catch (e) {
    if (e instanceof ApiError && e.status === 409 && !exists) {
      // Someone else made it meanwhile: the list now has it, and saving again replaces it.
      await loadDirectory().catch(() => {});
      setText(error, `${e.message} Save again to replace it.`);
    } else {
      shows(error)(e);
    }
  } finally {
    $('agent-save').disabled = false;
  }
}

async function deleteAgent(id, b) {
  directoryMessage('', '');
  b.disabled = true;
  try {
    await api('DELETE', `/agents/${enc(id)}`);
    await loadDirectory();
    directoryMessage(`Deleted ${id}.`, '');
  } catch (e) {
    shows($('directory-error'))(e);
  } finally {
    b.disabled = false;
  }
}

// ---------------------------------------------------------------- sign-in links

/** Shows the last issued link (or nothing) and what can be done with it. */
function showLink(text, message) {
  $('link-output').value = text || '';
  $('link-copy').disabled = !text;
  $('link-revoke').disabled = !(view.link && view.link.jti);
  setText($('link-status'), message || '');
}

async function issueLink(id, b) {
  directoryMessage('', '');
  b.disabled = true;
  try {
    const t = await api('POST', `/agents/${enc(id)}/tokens`, {});
    if (!t || typeof t.token !== 'string') throw new ApiError(0, 'The server gave no token.');
    const expires = new Date(Number(t.expires) * 1000);
    let message = `Sign-in link for ${id}, valid until ${until(expires)}.`;
    if (!t.link) message += ' (The agent page\'s address is not known: this is the token, to paste into the page.)';
    view.link = { jti: typeof t.jti === 'string' ? t.jti : '', agent: id, message };
    showLink(t.link || t.token, message);
  } catch (e) {
    shows($('directory-error'))(e);
  } finally {
    b.disabled = false;
  }
}

async function copyLink() {
  const input = $('link-output');
  if (!input.value) return;
  const base = view.link ? `${view.link.message} ` : '';
  try {
    await navigator.clipboard.writeText(input.value);
    setText($('link-status'), `${base}Copied.`);
  } catch {
    input.focus();
    input.select();
    let ok = false;
    try {
      ok = document.execCommand('copy');
    } catch {
      ok = false;
    }
    setText($('link-status'), ok ? `${base}Copied.` : `${base}Selected: copy it with Ctrl+C.`);
  }
}

async function revokeLink() {
  const link = view.link;
  if (!link || !link.jti) return;
  $('link-revoke').disabled = true;
  try {
    await api('POST', '/tokens/revoke', { jti: link.jti });
    if (view.link === link) {
      view.link = null;
      showLink('', 'Revoked.');
    }
    requestLive();
  } catch (e) {
    if (view.link === link) $('link-revoke').disabled = false;
    shows($('link-status'))(e);
  }
}

function onDirectoryClick(event) {
  const b = event.target.closest('button');
  const tr = b && b.closest('tr[data-agent]');
  if (!tr || b.disabled) return;
  const id = tr.dataset.agent;
  if (b.classList.contains('edit')) editAgent(id);
  else if (b.classList.contains('issue-link')) issueLink(id, b);
  else if (b.classList.contains('delete')) deleteAgent(id, b);
}

// ---------------------------------------------------------------- start

function wire() {
  $('signin-form').addEventListener('submit', signIn);
  $('console-signout').addEventListener('click', signOut);
  $('agents').tBodies[0].addEventListener('click', onAgentsClick);
  $('directory').tBodies[0].addEventListener('click', onDirectoryClick);
  $('agent-form').addEventListener('submit', saveAgent);
  $('agent-form').addEventListener('reset', () => {
    setText($('agent-error'), '');
  });
  $('link-copy').addEventListener('click', copyLink);
  $('link-revoke').addEventListener('click', revokeLink);
}

async function boot() {
  wire();
  showLink();
  try {
    const resp = await fetch('/console/session', {
      credentials: 'same-origin',
      cache: 'no-store',
      headers: { 'X-AE-Console': '1', Accept: 'application/json' },
    });
    if (resp.ok) startBoard();
    else showSignIn('');
  } catch {
    showSignIn('The console cannot reach the server.');
  }
}

boot();
