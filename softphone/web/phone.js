// The browser phone: this page plays Twilio's part in a call to the bridge. It POSTs /twiml as Twilio
// would, opens the Stream url from the TwiML, sends connected and start (customParameters from the
// TwiML's <Parameter>s), then the microphone as 20 ms µ-law frames, and plays the replies with
// Twilio's mark and clear semantics (worklet.js). Transcripts come on a side channel (/phone/events):
// the stream itself carries Twilio's protocol and nothing else.
import { setupCallMe } from './incoming.js';
import * as tw from './twilio.js';

const FRAME = 160; // µ-law bytes in a 20 ms frame
const FRAME_MS = 20;
const MAX_STREAMS = 5; // new streams Twilio-like resumption may open for one call (no endless loop)
const $ = (id) => document.getElementById(id);

// Everything the page shows; tests read it too (tests/test_browser.py).
const stats = (window.phone = { state: 'idle', status: 'Ready', ...fresh() });

function fresh() {
  return {
    callSid: '', startedAt: 0, framesSent: 0, framesPlayed: 0, marksReceived: 0, marksEchoed: 0,
    marksFlushed: 0, clears: 0, replies: 0, latenciesMs: [], transcript: [], errors: [],
    levelDb: null, replyPeakDb: null, after: [], queued: 0,
  };
}

let call = null;

class Call {
  constructor() {
    this.ids = { callSid: tw.sid('CA'), accountSid: tw.sid('AC'), streamSid: tw.sid('MZ') };
    this.seq = 0; // Twilio numbers every message it sends but connected
    this.chunk = 0;
    this.streams = 1;
    this.started = false; // start sent: media may flow
    this.over = false;
  }

  async dial() {
    Object.assign(stats, fresh(), { callSid: this.ids.callSid });
    setState('connecting', 'Opening the microphone…');
    await this.openAudio();
    if (this.over) return; // hung up while connecting
    setState('connecting', 'Ringing the bridge…');
    await this.listen();
    const webhook = new URL('/twiml', location.href).href;
    const params = tw.voiceParams(this.ids.callSid, this.ids.accountSid);
    const answer = await fetch(webhook, { method: 'POST', body: params });
    const text = await answer.text();
    if (this.over) return;
    if (!answer.ok) throw new Error(`the webhook answered HTTP ${answer.status}: ${text.slice(0, 120)}`);
    this.twiml = tw.parseTwiml(text, webhook);
    if (!this.twiml.streamUrl) {
      throw new Error(this.twiml.say ? `refused: “${this.twiml.say}”` : 'the TwiML has no <Connect><Stream>');
    }
    this.openStream();
  }

  async openAudio() {
    // Created before any await, while the click still counts as a user gesture (autoplay policy).
    this.audio = new AudioContext({ latencyHint: 'interactive' });
    if (!navigator.mediaDevices) throw new Error('no microphone here: open this page on localhost or over https');
    await this.audio.audioWorklet.addModule('/phone/worklet.js');
    // Echo cancellation matters here: with speakers, the echo persona would otherwise answer itself.
    this.mic = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    if (this.over) return this.mic.getTracks().forEach((track) => track.stop());
    this.node = new AudioWorkletNode(this.audio, 'twilio-phone', { outputChannelCount: [1] });
    this.node.port.onmessage = ({ data }) => this.fromAudio(data);
    this.audio.createMediaStreamSource(this.mic).connect(this.node).connect(this.audio.destination);
    await this.audio.resume();
  }

  listen() {
    // Subscribed before the webhook, so no transcript of this call can be missed.
    this.events = new EventSource(`/phone/events?call=${this.ids.callSid}`);
    this.events.onmessage = ({ data }) => addTranscript(JSON.parse(data));
    return new Promise((resolve) => {
      this.events.onopen = this.events.onerror = resolve;
      setTimeout(resolve, 2000);
    });
  }

  openStream() {
    this.ws = new WebSocket(this.twiml.streamUrl);
    this.ws.binaryType = 'arraybuffer';
    this.ws.onopen = () => {
      this.send(() => tw.connected(), false);
      this.send((seq) => tw.start(seq, this.ids, this.twiml.parameters));
      this.started = true;
      stats.startedAt = Date.now();
      setState('in-call', 'In call');
    };
    this.ws.onmessage = ({ data }) => this.fromServer(data);
    this.ws.onclose = ({ code }) => this.closed(code);
  }

  send(build, numbered = true) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN || this.over) return false;
    if (numbered) this.seq++;
    this.ws.send(JSON.stringify(build(this.seq)));
    return true;
  }

  fromAudio(msg) {
    if (msg.type === 'frame') {
      stats.levelDb = msg.level;
      stats.framesPlayed = Math.floor(msg.played / FRAME);
      stats.queued = msg.queued;
      stats.replyPeakDb = msg.peak > 0 ? 20 * Math.log10(msg.peak) : null;
      if (this.started) {
        const k = this.chunk++; // timestamp: ms since the stream started, on the audio clock
        if (this.send((seq) => tw.media(seq, this.ids.streamSid, k + 1, k * FRAME_MS, msg.ulaw))) {
          stats.framesSent++;
        }
      }
    } else if (msg.type === 'mark') {
      if (this.send((seq) => tw.mark(seq, this.ids.streamSid, msg.name))) {
        stats.marksEchoed++;
        if (msg.flushed) stats.marksFlushed++;
      }
    } else if (msg.type === 'reply') {
      stats.replies++;
      if (msg.latency !== null) stats.latenciesMs.push(Math.round(msg.latency * 1000));
    }
    render();
  }

  fromServer(data) {
    if (this.over) return; // after stop, Twilio neither plays nor answers anything
    if (typeof data !== 'string') return problem('31950 binary frame: Twilio only decodes text frames');
    let msg;
    try {
      msg = tw.parseServer(data, this.ids.streamSid);
    } catch (error) {
      if (error instanceof tw.Violation) return problem(error.message); // Twilio warns and ignores it
      throw error;
    }
    if (msg.event === 'media') {
      this.node.port.postMessage({ type: 'media', ulaw: msg.ulaw }, [msg.ulaw.buffer]);
    } else if (msg.event === 'mark') {
      stats.marksReceived++;
      this.node.port.postMessage({ type: 'mark', name: msg.name });
    } else {
      stats.clears++;
      this.node.port.postMessage({ type: 'clear' });
    }
  }

  hangup() {
    if (this.started) this.send((seq) => tw.stop(seq, this.ids));
    this.end('you hung up');
    if (this.ws) this.ws.close(1000);
  }

  async closed(code) {
    if (this.over) return;
    if (!this.started) return this.end(`the stream could not open (Twilio 31920, close ${code})`);
    // The server closed the stream, so Twilio goes on with the TwiML after </Connect>: a
    // <Redirect> fetches more, which may hang up, dial, or connect a new stream for the same call.
    this.started = false;
    const next = await this.redirect();
    if (this.over) return;
    if (next && next.streamUrl && this.streams < MAX_STREAMS) {
      Object.assign(this, { twiml: next, seq: 0, chunk: 0, streams: this.streams + 1 });
      this.ids.streamSid = tw.sid('MZ');
      this.node.port.postMessage({ type: 'reset' }); // the old stream's audio and marks went with it
      setState('connecting', 'Reconnecting…');
      return this.openStream();
    }
    stats.after = next ? next.verbs : [];
    this.end('the bridge ended the call');
  }

  async redirect() {
    if (!this.twiml.redirect) return null;
    const params = tw.voiceParams(this.ids.callSid, this.ids.accountSid);
    params.set('CallStatus', 'in-progress');
    try {
      const answer = await fetch(this.twiml.redirect, { method: 'POST', body: params });
      return tw.parseTwiml(await answer.text(), this.twiml.redirect);
    } catch (error) {
      problem(`redirect after the stream: ${error.message}`);
      return null;
    }
  }

  end(reason) {
    if (this.over) return;
    this.over = true;
    if (this.mic) this.mic.getTracks().forEach((track) => track.stop());
    if (this.audio) this.audio.close().catch(() => {});
    if (this.events) this.events.close();
    if (call === this) call = null;
    setState('ended', `Call ended: ${reason}`);
  }
}

function addTranscript({ role, text, final }) {
  // Pieces of one utterance arrive one by one; a new line starts when the speaker changes or the
  // previous utterance was final.
  const last = stats.transcript[stats.transcript.length - 1];
  if (last && last.role === role && !last.final) Object.assign(last, { text: last.text + text, final });
  else stats.transcript.push({ role, text, final });
  render();
}

function problem(text) {
  stats.errors.push(text);
  render();
}

function setState(state, status) {
  Object.assign(stats, { state, status });
  render();
}

// --- the page --------------------------------------------------------------------------------------

let renderQueued = false;

function render() {
  if (!renderQueued) {
    renderQueued = true;
    requestAnimationFrame(draw);
  }
}

function draw() {
  renderQueued = false;
  const active = stats.state === 'connecting' || stats.state === 'in-call';
  const button = $('call');
  button.textContent = active ? 'Hang up' : 'Call';
  button.className = active ? 'hangup' : 'call';
  document.body.dataset.state = stats.state;
  $('status').textContent = stats.status + (stats.state === 'in-call' ? ` · ${elapsed()}` : '');
  $('sid').textContent = stats.callSid;
  const level = stats.levelDb === null || !active ? -90 : stats.levelDb;
  $('level').style.width = `${Math.max(0, Math.min(100, ((level + 60) / 60) * 100))}%`;
  $('level-db').textContent = !active || stats.levelDb === null ? '—'
    : level < -90 ? 'silence' : `${Math.round(level)} dBFS`;
  $('sent').textContent = stats.framesSent;
  $('played').textContent = `${((stats.framesPlayed * FRAME_MS) / 1000).toFixed(1)} s`;
  $('marks').textContent = `${stats.marksEchoed} / ${stats.marksReceived}`;
  $('clears').textContent = stats.clears;
  const latest = stats.latenciesMs[stats.latenciesMs.length - 1];
  $('latency').textContent = latest === undefined ? '—' : `${latest} ms`;
  drawCallMe();
  $('after').textContent = stats.after.length ? `then ${stats.after.map((v) => `<${v}>`).join(' ')}` : '';
  list($('transcript'), stats.transcript, (line, li) => {
    li.className = line.role;
    li.textContent = line.text;
  });
  list($('turns'), stats.latenciesMs, (ms, li, i) => {
    li.textContent = `turn ${i + 1}: ${ms} ms`;
  });
  $('errors').hidden = !stats.errors.length;
  list($('error-list'), stats.errors, (text, li) => {
    li.textContent = text;
  });
}

function list(element, items, fill) {
  while (element.children.length > items.length) element.lastChild.remove();
  items.forEach((item, i) => {
    const li = element.children[i] || element.appendChild(document.createElement('li'));
    fill(item, li, i);
  });
}

function elapsed() {
  const s = Math.floor((Date.now() - stats.startedAt) / 1000);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
}

$('call').addEventListener('click', () => {
  if (call) return call.hangup();
  const current = (call = new Call());
  current.dial().catch((error) => {
    problem(error.message);
    current.end(error.message);
  });
});
const drawCallMe = setupCallMe(Call, {
  stats, fresh, setState, problem, render, current: () => call, adopt: (incoming) => { call = incoming; },
});
setInterval(() => stats.state === 'in-call' && render(), 500);
render();
