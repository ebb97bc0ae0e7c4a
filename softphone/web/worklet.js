// The browser phone's audio thread. Up: microphone → 8 kHz → 20 ms µ-law frames to the page. Down:
// Twilio's playback queue (media, mark, clear) played on the audio clock, so marks are echoed when
// their audio has really been played, not when it arrived.
import { FRAME, RATE, Playout, Resampler, decodeFrame, encodeFrame, levelDb } from './dsp.js';

const VOICE_DB = -40; // a frame louder than this counts as the caller speaking (per-turn latency)

class PhoneProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.mic = new Resampler(sampleRate, RATE);
    this.frame = new Float32Array(FRAME);
    this.filled = 0;
    this.playout = new Playout(sampleRate);
    this.voiceEnd = -1; // audio-clock time (s) of the caller's last voiced frame
    this.lastReply = -1;
    this.port.onmessage = ({ data }) => this.command(data);
  }

  command(msg) {
    if (msg.type === 'media') this.playout.addAudio(decodeFrame(msg.ulaw));
    else if (msg.type === 'mark') this.echo(this.playout.addMark(msg.name));
    else if (msg.type === 'clear') this.echo(this.playout.clear());
    else if (msg.type === 'reset') this.playout.clear(); // a new stream: old marks have no one to go to
  }

  echo(marks) {
    for (const mark of marks) this.port.postMessage({ type: 'mark', ...mark });
  }

  process(inputs, outputs) {
    const mic = inputs[0] && inputs[0][0];
    if (mic) this.capture(mic);
    const out = outputs[0];
    const { echoes, started } = this.playout.render(out[0]);
    for (let c = 1; c < out.length; c++) out[c].set(out[0]);
    if (started >= 0) this.replyStarted(currentTime + started / sampleRate);
    this.echo(echoes);
    return true;
  }

  capture(block) {
    for (const sample of this.mic.push(block)) {
      this.frame[this.filled++] = sample;
      if (this.filled === FRAME) this.sendFrame();
    }
  }

  sendFrame() {
    this.filled = 0;
    const level = levelDb(this.frame);
    if (level > VOICE_DB) this.voiceEnd = currentTime;
    const ulaw = encodeFrame(this.frame);
    const { played, queued, peak } = this.playout;
    this.port.postMessage({ type: 'frame', ulaw, level, played, queued, peak }, [ulaw.buffer]);
  }

  replyStarted(t) {
    // A turn's latency: the caller's last voiced frame → the reply's first sample played. A reply
    // with no speech since the previous one (a greeting, a second reply) has none.
    const latency = this.voiceEnd > this.lastReply ? t - this.voiceEnd : null;
    this.lastReply = t;
    this.port.postMessage({ type: 'reply', latency });
  }
}

registerProcessor('twilio-phone', PhoneProcessor);
