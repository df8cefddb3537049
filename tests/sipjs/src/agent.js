// A second browser agent for the end-to-end tests: SIP.js 0.21 (not the product's JsSIP)
// registers with the edge over WSS with its bearer token, answers a call with audio, and
// signs out the way SIP.js does, with an un-REGISTER that carries no token.
//
// Opened as `index.html?wss=<the edge's wss://…/sip>&token=<JWT>`. Its state shows in the
// page and in `document.body.dataset.state` (connecting, registered, ringing, in-call,
// signed-out); `window.sipjsAgent` is what the test drives and reads.
import { Registerer, RegistererState, SessionState, UserAgent } from 'sip.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const token = params.get('token') || '';
// The agent is the token's subject, as on the product's page.
const agent = JSON.parse(atob(token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/'))).sub;
const domain = new URL(params.get('wss')).hostname;

let session = null;
let invitations = 0;
let signedOut = false;

function setState(state) {
  document.body.dataset.state = state;
  $('state').textContent = state;
}

function fail(what, e) {
  $('error').textContent = `${what}: ${e && e.message ? e.message : e}`;
}

const ua = new UserAgent({
  uri: UserAgent.makeURI(`sip:${agent}@${domain}`),
  transportOptions: { server: params.get('wss') },
  userAgentString: 'agent-edge-sipjs-test',
  logLevel: 'warn',
  sessionDescriptionHandlerFactoryOptions: {
    // Loopback only: nothing to gather from a STUN server.
    peerConnectionConfiguration: { iceServers: [] },
    iceGatheringTimeout: 1000,
  },
  delegate: { onInvite },
});

// Every REGISTER the page sends, as the test reads it: whether it carried a token, and the
// expiry its Contact asked for.
const registers = [];
const send = ua.transport.send.bind(ua.transport);
ua.transport.send = (message) => {
  if (message.startsWith('REGISTER ')) {
    const expires = /^Contact:.*;expires=(\d+)/mi.exec(message);
    registers.push({
      token: /^Authorization: Bearer \S+/mi.test(message),
      expires: expires ? Number(expires[1]) : null,
    });
  }
  return send(message);
};

// The token goes on the REGISTER (and its refreshes) only: SIP.js's unregister() replaces
// the extra headers with its own options', so the un-REGISTER carries none.
const registerer = new Registerer(ua, {
  expires: 300,
  extraHeaders: [`Authorization: Bearer ${token}`],
});
registerer.stateChange.addListener((state) => {
  if (state === RegistererState.Registered && !session) setState('registered');
  if (state === RegistererState.Unregistered && signedOut) setState('signed-out');
});

function onInvite(invitation) {
  invitations += 1;
  if (session || signedOut) {
    invitation.reject({ statusCode: 486 });
    return;
  }
  session = invitation;
  const from = invitation.remoteIdentity;
  $('caller').textContent = `Call from ${from.displayName || from.uri.user}`;
  $('answer').disabled = false;
  setState('ringing');
  invitation.stateChange.addListener((state) => {
    if (state === SessionState.Established) {
      const audio = $('remote');
      audio.srcObject = invitation.sessionDescriptionHandler.remoteMediaStream;
      audio.play().catch((e) => fail('play', e));
      setState('in-call');
    }
    if (state === SessionState.Terminated) {
      session = null;
      $('caller').textContent = '';
      $('answer').disabled = true;
      setState(signedOut ? 'signed-out' : 'registered');
    }
  });
}

function answer() {
  if (!session) return;
  $('answer').disabled = true;
  session.accept({
    sessionDescriptionHandlerOptions: { constraints: { audio: true, video: false } },
  }).catch((e) => fail('answer', e));
}

/** A REGISTER's refusal, shown on the page. */
const refused = (what) => ({
  requestDelegate: {
    onReject: (r) => fail(what, `${r.message.statusCode} ${r.message.reasonPhrase}`),
  },
});

function signOut() {
  signedOut = true;
  registerer.unregister(refused('sign out')).catch((e) => fail('sign out', e));
}

async function audioStats() {
  const pc = session && session.sessionDescriptionHandler
    && session.sessionDescriptionHandler.peerConnection;
  if (!pc) return null;
  const out = { packetsReceived: 0, packetsSent: 0, totalAudioEnergy: 0 };
  (await pc.getStats()).forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'audio') {
      out.packetsReceived = s.packetsReceived || 0;
      out.totalAudioEnergy = s.totalAudioEnergy || 0;
    }
    if (s.type === 'outbound-rtp' && s.kind === 'audio') out.packetsSent = s.packetsSent || 0;
  });
  return out;
}

window.sipjsAgent = {
  state: () => ({
    page: document.body.dataset.state,
    registerer: registerer.state,
    session: session ? session.state : null,
    invitations,
    connected: ua.isConnected(),
    registers,
    error: $('error').textContent,
  }),
  answer,
  signOut,
  audioStats,
};

$('answer').addEventListener('click', answer);
$('signout').addEventListener('click', signOut);

ua.start()
  .then(() => registerer.register(refused('register')))
  .catch((e) => fail('register', e));
