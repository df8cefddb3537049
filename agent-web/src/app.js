// The agent page: sign in with a token, register over WSS with JsSIP (the token as a bearer
// credential on every request), take calls with WebRTC audio. State shows in the page and in
// `document.body.dataset.state` (signed-out, connecting, registered, ringing, in-call) so
// people and the test harness read the same thing.
import JsSIP from 'jssip';

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = 'agent-edge-token';

let ua = null;
let session = null;
let tokenTimer = null;
let durationTimer = null;
let signingOut = false;

function setState(state, text) {
  document.body.dataset.state = state;
  $('status').textContent = text || state;
}

function banner(text) {
  $('banner').textContent = text || '';
  $('banner').hidden = !text;
}

/** The claims of a JWT, or null when it is not one. */
function claims(token) {
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  try {
    const json = atob(parts[1].replace(/-/g, '+').replace(/_/g, '/'));
    const c = JSON.parse(json);
    return typeof c.sub === 'string' && c.sub ? c : null;
  } catch {
    return null;
  }
}

function signOut(reason) {
  signingOut = true;
  clearTimeout(tokenTimer);
  if (session) {
    try { session.terminate(); } catch { /* already over */ }
  }
  if (ua) {
    try { ua.stop(); } catch { /* already stopped */ }
  }
  ua = null;
  session = null;
  sessionStorage.removeItem(TOKEN_KEY);
  banner('');
  $('desk').hidden = true;
  $('signin').hidden = false;
  $('who').textContent = '';
  $('signin-error').textContent = reason || '';
  setState('signed-out', 'signed out');
  $('token').focus();
}

function signIn(token) {
  const c = claims(token);
  if (!c) {
    $('signin-error').textContent = 'That is not an agent token.';
    setState('signed-out', 'signed out');
    return;
  }
  if (c.exp && c.exp * 1000 <= Date.now()) {
    $('signin-error').textContent = 'That token has expired. Ask your supervisor for a new one.';
    return;
  }
  signingOut = false;
  sessionStorage.setItem(TOKEN_KEY, token);
  $('signin-error').textContent = '';
  $('signin').hidden = true;
  $('desk').hidden = false;
  $('who').textContent = `Signed in as ${c.name || c.sub}`;
  setState('connecting', 'connecting');
  if (c.exp) {
    tokenTimer = setTimeout(() => signOut('Your token expired. Sign in again with a new one.'),
      Math.max(0, c.exp * 1000 - Date.now()));
  }
  const socket = new JsSIP.WebSocketInterface(sipSocketUrl());
  ua = new JsSIP.UA({
    sockets: [socket],
    uri: `sip:${c.sub}@${location.hostname}`,
    display_name: c.name || c.sub,
    authorization_jwt: `Bearer ${token}`,
    register: true,
    register_expires: 300,
    session_timers: false,
    user_agent: 'agent-edge-web',
  });
  ua.on('connected', () => banner(''));
  ua.on('disconnected', () => {
    if (!signingOut) {
      banner('Connection lost — reconnecting…');
      setState('connecting', 'reconnecting');
    }
  });
  ua.on('registered', () => {
    banner('');
    if (!session) setState('registered', 'registered');
  });
  ua.on('unregistered', () => {
    if (!signingOut) setState('connecting', 'not registered');
  });
  ua.on('registrationFailed', (e) => {
    const code = e.response && e.response.status_code;
    if (code === 401 || code === 403) {
      const why = (e.response.getHeader('WWW-Authenticate') || '').includes('invalid_token')
        ? 'Your token was refused (revoked, expired or not valid here).'
        : 'Your token was refused.';
      signOut(why);
    }
  });
  ua.on('newMessage', (e) => {
    if (e.originator !== 'remote') return;
    const type = e.request.getHeader('Content-Type') || '';
    try {
      if (type.includes('agent-edge.state')) showAcdState(JSON.parse(e.request.body));
      if (type.includes('agent-edge.call-quality')) showQuality(JSON.parse(e.request.body));
    } catch { /* not ours to read */ }
  });
  ua.on('newRTCSession', (e) => {
    if (e.originator !== 'remote') return;
    if (session) {
      e.session.terminate({ status_code: 486 });
      return;
    }
    incoming(e.session, e.request);
  });
  ua.start();
}

/** What the edge hears of this call's audio: one way missing is said, in the agent's words. */
const ONE_WAY_NOTICE = {
  'caller-silent': 'You cannot hear the caller: no audio arrives from their side.',
  'agent-silent': 'The caller cannot hear you: no audio from you reaches the edge. Check your microphone.',
};

function showQuality(notice) {
  if (!session || notice.call_id !== sessionCallId) return;
  const text = ONE_WAY_NOTICE[notice.one_way] || '';
  $('quality-notice').textContent = text;
  $('quality-notice').hidden = !text;
}

let wrapTimer = null;

/** What the distributor thinks of this agent: available, away (why), wrap-up (time left)… */
function showAcdState(view) {
  clearInterval(wrapTimer);
  document.body.dataset.acd = view.state;
  $('acd-state').textContent = view.reason ? `${view.state} (${view.reason})` : view.state;
  $('wrap-up-left').textContent = '';
  if (view.state === 'wrap-up' && view.wrap_up_left_ms) {
    const until = Date.now() + view.wrap_up_left_ms;
    const tick = () => {
      const left = Math.max(0, Math.ceil((until - Date.now()) / 1000));
      $('wrap-up-left').textContent = `${left} s left`;
    };
    tick();
    wrapTimer = setInterval(tick, 1000);
  }
}

function sendPresence(presence) {
  if (!ua) return;
  $('presence-error').textContent = '';
  ua.sendMessage(`sip:presence@${location.hostname}`, JSON.stringify(presence), {
    contentType: 'application/vnd.agent-edge.presence+json',
    eventHandlers: {
      failed: (e) => {
        $('presence-error').textContent = `Presence not changed: ${e.cause}`;
      },
    },
  });
}

/**
 * The TURN server a call's INVITE names (the distributor's public port, TLS), with
 * credentials for this agent alone: `<turns:HOST:PORT?transport=tcp>;username="…";credential="…"`.
 */
function turnServer(header) {
  const m = /^<([^>]+)>\s*;\s*username="([^"]*)"\s*;\s*credential="([^"]*)"/.exec(header || '');
  return m ? [{ urls: m[1], username: m[2], credential: m[3] }] : [];
}

// For checking one path (never the default): `?ice=relay` forces every call through TURN,
// `?ice=norelay` leaves TURN out (the edge's own UDP candidate and ICE-TCP only). Otherwise
// WebRTC takes whichever works; where both ICE-TCP and TURN do, Chromium picks either.
const icePolicy = new URLSearchParams(location.search).get('ice');
const forceRelay = icePolicy === 'relay';
// How long candidate gathering may hold up an answer once the first candidate is in: the
// edge's own and ICE-TCP candidates need nothing gathered, and a TURN server that does not
// answer must not delay the call.
const GATHER_WAIT_MS = 1500;
let callIce = [];

function pcConfig() {
  const config = { iceServers: callIce };
  if (forceRelay) config.iceTransportPolicy = 'relay';
  return config;
}

/** The Call-ID of the call in progress: what the edge's notices about it name. */
let sessionCallId = null;

function incoming(s, request) {
  session = s;
  sessionCallId = request.call_id;
  callIce = icePolicy === 'norelay' ? [] : turnServer(request.getHeader('X-Turn'));
  let gathering = null;
  s.on('icecandidate', (ev) => {
    // A relay candidate is all TURN adds: answer with it rather than wait for the rest.
    if (/ typ relay /.test(ev.candidate.candidate)) ev.ready();
    else if (!gathering) gathering = setTimeout(ev.ready, GATHER_WAIT_MS);
  });
  const from = request.from;
  const caller = (from.display_name || from.uri.user || 'unknown caller');
  const waited = Number(request.getHeader('X-AE-Waited') || 0);
  $('in-caller').textContent = caller;
  $('in-type').textContent = request.getHeader('X-AE-Call-Type') || '—';
  $('in-queue').textContent = request.getHeader('X-AE-Queue') || '—';
  $('in-waited').textContent = `${waited} s`;
  $('call-caller').textContent = caller;
  $('incoming').hidden = false;
  setState('ringing', 'ringing');
  $('answer').focus();
  s.on('peerconnection', (ev) => attachAudio(ev.peerconnection));
  s.on('accepted', () => {
    $('incoming').hidden = true;
    $('incall').hidden = false;
    setState('in-call', 'in a call');
    const started = Date.now();
    durationTimer = setInterval(() => {
      const secs = Math.floor((Date.now() - started) / 1000);
      $('duration').textContent = `${Math.floor(secs / 60)}:${String(secs % 60).padStart(2, '0')}`;
    }, 1000);
    $('hangup').focus();
  });
  const over = () => {
    clearTimeout(gathering);
    clearInterval(durationTimer);
    $('duration').textContent = '0:00';
    $('incoming').hidden = true;
    $('incall').hidden = true;
    $('mute').setAttribute('aria-pressed', 'false');
    $('hold').setAttribute('aria-pressed', 'false');
    $('quality-notice').textContent = '';
    $('quality-notice').hidden = true;
    session = null;
    if (ua && ua.isRegistered()) setState('registered', 'registered');
  };
  s.on('ended', over);
  s.on('failed', over);
}

function attachAudio(pc) {
  pc.addEventListener('track', (ev) => {
    const audio = $('remote');
    audio.srcObject = ev.streams[0] || new MediaStream([ev.track]);
    audio.play().catch(() => { /* autoplay may need a gesture; the Answer click was one */ });
  });
}

// For supervisors' tools and the test harness: what WebRTC says about the call's audio.
window.agentEdge = {
  async audioStats() {
    const pc = session && session.connection;
    if (!pc) return null;
    const out = { packetsReceived: 0, totalAudioEnergy: 0, packetsSent: 0, path: null };
    const stats = await pc.getStats();
    stats.forEach((s) => {
      // The pair ICE chose, and how it reaches the edge: udp, tcp (ICE-TCP), or a relay
      // candidate and the protocol to the TURN server (tls).
      if (s.type === 'transport' && s.selectedCandidatePairId) {
        const pair = stats.get(s.selectedCandidatePairId);
        const local = pair && stats.get(pair.localCandidateId);
        if (local) {
          out.path = {
            candidateType: local.candidateType,
            protocol: local.protocol,
            relayProtocol: local.relayProtocol || null,
          };
        }
      }
      if (s.type === 'inbound-rtp' && s.kind === 'audio') {
        out.packetsReceived = s.packetsReceived || 0;
        out.totalAudioEnergy = s.totalAudioEnergy || 0;
      }
      if (s.type === 'outbound-rtp' && s.kind === 'audio') out.packetsSent = s.packetsSent || 0;
    });
    return out;
  },
};

$('signin-form').addEventListener('submit', (e) => {
  e.preventDefault();
  signIn($('token').value.trim());
});
$('answer').addEventListener('click', () => {
  if (session) {
    session.answer({ mediaConstraints: { audio: true, video: false }, pcConfig: pcConfig() });
  }
});
$('decline').addEventListener('click', () => {
  if (session) session.terminate({ status_code: 486, reason_phrase: 'Declined' });
});
$('hangup').addEventListener('click', () => {
  if (session) session.terminate();
});
$('mute').addEventListener('click', () => {
  if (!session) return;
  const muted = session.isMuted().audio;
  if (muted) session.unmute({ audio: true }); else session.mute({ audio: true });
  $('mute').setAttribute('aria-pressed', String(!muted));
});
$('hold').addEventListener('click', () => {
  if (!session) return;
  const held = session.isOnHold().local;
  if (held) session.unhold(); else session.hold();
  $('hold').setAttribute('aria-pressed', String(!held));
});
$('keypad').addEventListener('click', (e) => {
  const digit = e.target.dataset && e.target.dataset.digit;
  if (session && digit) session.sendDTMF(digit, { transportType: 'RFC2833' });
});
$('signout').addEventListener('click', () => signOut('You signed out.'));
$('go-available').addEventListener('click', () => sendPresence({ state: 'available' }));
$('go-away').addEventListener('click', () => sendPresence({ state: 'away', reason: $('away-reason').value }));

// A link with ?token=… signs in at once; the token leaves the address bar (and history).
// SIP over WebSocket lives beside the page: /sip on the edge itself, /edge/<id>/sip when the
// page is an edge exposed through the distributor.
function sipSocketUrl() {
  const url = new URL('sip', location.href);
  url.protocol = 'wss:';
  return url.href;
}

const params = new URLSearchParams(location.search);
const linked = params.get('token');
if (linked) {
  params.delete('token');
  const rest = params.toString();
  history.replaceState(null, '', location.pathname + (rest ? `?${rest}` : '') + location.hash);
}
const remembered = linked || sessionStorage.getItem(TOKEN_KEY);
if (remembered) signIn(remembered); else setState('signed-out', 'signed out');
