// Twilio's side of Media Streams, pure: the webhook parameters, the TwiML it reads, the messages it
// sends, and its checks on what a server sends back. The browser twin of softphone/webhook.py and
// softphone/wire.py; Twilio's side as documented:
// https://www.twilio.com/docs/voice/media-streams/websocket-messages

const FROM = '+15550100001'; // 555-01xx numbers are reserved for fiction
const TO = '+15550100002';

// What a server may send, with exactly these members; anything else draws warning 31951.
const SERVER_EVENTS = {
  media: ['event', 'media', 'streamSid'],
  mark: ['event', 'mark', 'streamSid'],
  clear: ['event', 'streamSid'],
};

export class Violation extends Error {}

/** A Twilio-shaped SID: two letters and 32 hex digits. */
export function sid(prefix) {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return prefix + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** The form parameters of an inbound call's first webhook, while the phone still rings. */
export function voiceParams(callSid, accountSid) {
  return new URLSearchParams({
    AccountSid: accountSid, ApiVersion: '2010-04-01', CallSid: callSid, CallStatus: 'ringing',
    Called: TO, Caller: FROM, Direction: 'inbound', From: FROM, To: TO,
  });
}

/** What a bidirectional stream needs from the webhook's answer: Response/Connect/Stream's url and
 * <Parameter>s, and the verbs after </Connect> (they run once the server closes the stream). */
export function parseTwiml(text, webhookUrl) {
  const doc = new DOMParser().parseFromString(text, 'application/xml');
  const root = doc.documentElement;
  if (doc.querySelector('parsererror') || root.tagName !== 'Response') {
    throw new Violation(`the webhook did not answer TwiML: ${text.slice(0, 120)}`);
  }
  const verbs = Array.from(root.children);
  const connect = verbs.findIndex((verb) => verb.tagName === 'Connect');
  const stream = connect >= 0 ? verbs[connect].querySelector('Stream') : null;
  const after = verbs.slice(connect + 1);
  const redirect = after.find((verb) => verb.tagName === 'Redirect');
  return {
    streamUrl: stream && stream.getAttribute('url') ? streamUrl(stream.getAttribute('url'), webhookUrl) : null,
    parameters: Object.fromEntries(Array.from(stream ? stream.querySelectorAll('Parameter') : [],
      (p) => [p.getAttribute('name') || '', p.getAttribute('value') || ''])),
    verbs: verbs.map((verb) => verb.tagName),
    after: after.map((verb) => verb.tagName),
    redirect: redirect ? new URL(redirect.textContent.trim(), webhookUrl).href : null,
    say: Array.from(root.querySelectorAll('Say'), (say) => say.textContent).join(' '),
  };
}

// A relative url is resolved against the webhook; a query string is dropped, as Twilio
// reportedly strips it, so a bridge must not depend on one.
function streamUrl(url, webhookUrl) {
  const resolved = new URL(url, webhookUrl);
  resolved.protocol = { 'http:': 'ws:', 'https:': 'wss:' }[resolved.protocol] || resolved.protocol;
  if (!['ws:', 'wss:'].includes(resolved.protocol)) {
    throw new Violation(`31922 stream url must be wss: ${url}`);
  }
  resolved.search = '';
  resolved.hash = '';
  return resolved.href;
}

// --- what Twilio sends: numbers as strings, in the documented field order --------------------------

export function connected() {
  return { event: 'connected', protocol: 'Call', version: '1.0.0' };
}

export function start(seq, ids, parameters) {
  return {
    event: 'start', sequenceNumber: String(seq),
    start: {
      accountSid: ids.accountSid, streamSid: ids.streamSid, callSid: ids.callSid, tracks: ['inbound'],
      mediaFormat: { encoding: 'audio/x-mulaw', sampleRate: 8000, channels: 1 },
      customParameters: parameters,
    },
    streamSid: ids.streamSid,
  };
}

export function media(seq, streamSid, chunk, timestampMs, ulaw) {
  return {
    event: 'media', sequenceNumber: String(seq),
    media: { track: 'inbound', chunk: String(chunk), timestamp: String(timestampMs), payload: toBase64(ulaw) },
    streamSid,
  };
}

export function mark(seq, streamSid, name) {
  return { event: 'mark', sequenceNumber: String(seq), streamSid, mark: { name } };
}

export function stop(seq, ids) {
  return {
    event: 'stop', sequenceNumber: String(seq),
    stop: { accountSid: ids.accountSid, callSid: ids.callSid }, streamSid: ids.streamSid,
  };
}

// --- what a server sends, checked as Twilio checks it --------------------------------------------

/** One text frame → {event: 'media', ulaw} | {event: 'mark', name} | {event: 'clear'}; throws a
 * Violation for anything Twilio would warn about (31951) and ignore. */
export function parseServer(text, streamSid) {
  let msg;
  try {
    msg = JSON.parse(text);
  } catch {
    throw new Violation(`31951 not JSON: ${text.slice(0, 80)}`);
  }
  const expected = msg && Object.hasOwn(SERVER_EVENTS, msg.event) ? SERVER_EVENTS[msg.event] : null;
  if (!expected) throw new Violation(`31951 unknown event ${JSON.stringify(msg && msg.event)}`);
  exactMembers(msg, expected, msg.event);
  if (msg.streamSid !== streamSid) throw new Violation(`31951 ${msg.event} for stream ${msg.streamSid}`);
  if (msg.event === 'media') {
    exactMembers(msg.media, ['payload'], 'media.media'); // no track/chunk/timestamp outbound
    return { event: 'media', ulaw: fromBase64(msg.media.payload) };
  }
  if (msg.event === 'mark') {
    exactMembers(msg.mark, ['name'], 'mark.mark');
    if (typeof msg.mark.name !== 'string') throw new Violation('31951 mark.name is not a string');
    return { event: 'mark', name: msg.mark.name };
  }
  return { event: 'clear' };
}

function exactMembers(obj, expected, where) {
  const keys = obj && typeof obj === 'object' ? Object.keys(obj).sort() : [];
  if (keys.join() !== [...expected].sort().join()) {
    throw new Violation(`31951 ${where} has members [${keys}], expected [${expected}]`);
  }
}

// Standard base64 alphabet with padding.
export function toBase64(bytes) {
  let text = '';
  for (const b of bytes) text += String.fromCharCode(b);
  return btoa(text);
}

export function fromBase64(text) {
  if (typeof text !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4) {
    throw new Violation('31951 media.payload is not standard base64');
  }
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}
