// The browser phone's audio arithmetic: G.711 µ-law, a band-limited resampler, and Twilio's playback
// queue. Pure (no Web Audio), so worklet.js runs it on the audio thread and the tests run it in a page.

export const RATE = 8000; // Media Streams audio: µ-law, 8 kHz, mono, both ways (Twilio's Media Streams docs)
export const FRAME = 160; // 20 ms: the usual inbound frame
const CUTOFF = 0.92; // passband edge as a fraction of the lower Nyquist rate: 3.68 kHz at 8 kHz
const ZEROS = 16; // sinc zero crossings each side of the kernel: the filter's sharpness
const TABLE_STEPS = 512; // kernel table points per input sample (linear between them)
const REPLY_GAP_S = 0.25; // playback idle this long, and new audio counts as a new reply

// --- G.711 µ-law, exactly as the ITU-T G.191 reference (and common/g711.py) computes it ----------

export function encodeSample(x) {
  // The reference works on 14 bits; negative values use one's complement before the shift.
  const absno = Math.min((x < 0 ? ~x >> 2 : x >> 2) + 33, 0x1fff);
  let segment = 1;
  for (let i = absno >> 6; i; i >>= 1) segment++;
  const code = ((8 - segment) << 4) | (0x0f - ((absno >> segment) & 0x0f));
  return x >= 0 ? code | 0x80 : code;
}

export function decodeSample(code) {
  const inverted = ~code & 0xff;
  const exponent = (inverted >> 4) & 0x07;
  const step = 4 << (exponent + 1);
  const magnitude = (0x80 << exponent) + step * (inverted & 0x0f) + step / 2 - 4 * 33;
  return code < 0x80 ? -magnitude : magnitude;
}

const DECODE = Float32Array.from({ length: 256 }, (_, code) => decodeSample(code) / 32768);

/** Float samples (±1 full scale) → µ-law bytes; rounded and clipped, never wrapped. */
export function encodeFrame(samples) {
  const out = new Uint8Array(samples.length);
  for (let i = 0; i < samples.length; i++) {
    out[i] = encodeSample(Math.max(-32768, Math.min(32767, Math.round(samples[i] * 32768))));
  }
  return out;
}

export function decodeFrame(ulaw) {
  return Float32Array.from(ulaw, (code) => DECODE[code]);
}

export function levelDb(samples) {
  let sum = 0;
  for (const s of samples) sum += s * s;
  return 10 * Math.log10(sum / Math.max(samples.length, 1) + 1e-12);
}

// --- Resampling: a Blackman-windowed sinc evaluated at fractional positions -----------------------
// One kernel serves any pair of rates (AudioContexts run at 44.1, 48 or 96 kHz), and because every
// output sample depends only on absolute positions, chunked input gives exactly one-shot output.

class Kernel {
  constructor(scale) {
    this.half = Math.ceil(ZEROS / scale); // support: |d| < half input samples
    this.table = new Float32Array(this.half * TABLE_STEPS + 2);
    for (let i = 0; i < this.half * TABLE_STEPS; i++) {
      const d = i / TABLE_STEPS;
      const x = Math.PI * scale * d;
      const u = Math.PI * d / this.half;
      this.table[i] = scale * (d === 0 ? 1 : Math.sin(x) / x) *
        (0.42 + 0.5 * Math.cos(u) + 0.08 * Math.cos(2 * u));
    }
  }

  at(d) {
    const p = Math.abs(d) * TABLE_STEPS;
    const i = p | 0;
    return this.table[i] + (this.table[i + 1] - this.table[i]) * (p - i);
  }
}

function kernelFor(inRate, outRate) {
  return new Kernel(Math.min(1, outRate / inRate) * CUTOFF);
}

// The value at fractional position p of samples buf (buf[0] sits at absolute index base); samples
// outside the buffer are silence.
function interpolate(kernel, buf, base, p) {
  const centre = Math.floor(p);
  const last = Math.min(centre + kernel.half, base + buf.length - 1);
  let sum = 0;
  for (let k = Math.max(centre - kernel.half + 1, base); k <= last; k++) {
    sum += buf[k - base] * kernel.at(p - k);
  }
  return sum;
}

function concat(a, b) {
  const out = new Float32Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/** Streaming resampler (the microphone: context rate → 8 kHz). */
export class Resampler {
  constructor(inRate, outRate) {
    this.inRate = inRate;
    this.outRate = outRate;
    this.kernel = kernelFor(inRate, outRate);
    this.buf = new Float32Array(0);
    this.base = 0; // absolute input index of buf[0]; what came before the first sample is silence
    this.n = 0; // output samples made so far
  }

  /** Feed input; returns every output sample whose kernel window the input now covers. */
  push(input) {
    this.buf = concat(this.buf, input);
    const end = this.base + this.buf.length;
    const out = [];
    for (let p = this.position(); Math.floor(p) + this.kernel.half < end; p = this.position()) {
      out.push(interpolate(this.kernel, this.buf, this.base, p));
      this.n++;
    }
    const keep = Math.max(this.base, Math.floor(this.position()) - this.kernel.half + 1);
    this.buf = this.buf.slice(keep - this.base);
    this.base = keep;
    return Float32Array.from(out);
  }

  position() {
    return (this.n * this.inRate) / this.outRate; // from the count, so no rounding error builds up
  }
}

// --- Twilio's playback queue ----------------------------------------------------------------------
// Media is queued and played in order; a mark comes back when playback reaches it (at once if nothing
// is queued); clear drops what is queued and sends back every pending mark, flushed. Audio stays at
// 8 kHz in the queue and is resampled as it plays, so a mark is echoed exactly when the audio ahead
// of it has been played, its last sample included.

export class Playout {
  constructor(outRate) {
    this.outRate = outRate;
    this.step = RATE / outRate; // queue samples per output sample
    this.kernel = kernelFor(RATE, outRate);
    this.buf = new Float32Array(0);
    this.base = 0; // absolute queue index of buf[0]
    this.pos = 0; // the play cursor, in queue samples
    this.marks = []; // {name, at}: due once the cursor reaches `at`
    this.played = 0; // queue samples played in all
    this.peak = 0; // loudest sample played (to tell a reply from silence)
    this.clock = 0; // output samples rendered
    this.idleSince = 0; // output sample at which the queue ran dry; null while playing
    this.newReply = true; // the next audio starts a reply whatever the gap (call start, clear)
  }

  get end() {
    return this.base + this.buf.length;
  }

  get queued() {
    return Math.max(0, this.end - this.pos);
  }

  addAudio(samples) {
    if (this.pos > this.end) this.pos = this.end; // ran dry: the new audio starts at its first sample
    this.buf = concat(this.buf, samples);
  }

  /** Returns the echoes due now: the mark itself when nothing is queued. */
  addMark(name) {
    if (this.pos >= this.end) return [{ name, flushed: false }];
    this.marks.push({ name, at: this.end });
    return [];
  }

  /** Drops the queue; every pending mark comes back at once, in order, flushed. */
  clear() {
    const echoes = this.marks.map(({ name }) => ({ name, flushed: true }));
    this.marks = [];
    this.buf = this.buf.slice(0, Math.max(0, Math.ceil(this.pos) - this.base));
    this.newReply = true;
    return echoes;
  }

  /** Fill `out` from the queue. Returns the marks reached and where a new reply started (-1: none). */
  render(out) {
    const echoes = [];
    let started = -1;
    for (let i = 0; i < out.length; i++, this.clock++) {
      if (this.pos >= this.end) {
        out[i] = 0;
        if (this.idleSince === null) this.idleSince = this.clock;
        continue;
      }
      if (this.idleSince !== null) {
        const gap = this.clock - this.idleSince >= REPLY_GAP_S * this.outRate;
        if ((this.newReply || gap) && started < 0) started = i;
        this.idleSince = null;
        this.newReply = false;
      }
      out[i] = interpolate(this.kernel, this.buf, this.base, this.pos);
      this.peak = Math.max(this.peak, Math.abs(out[i]));
      this.pos += this.step;
      this.played += this.step;
      while (this.marks.length && this.marks[0].at <= this.pos) {
        echoes.push({ name: this.marks.shift().name, flushed: false });
      }
    }
    const keep = Math.min(this.end, Math.max(this.base, Math.floor(this.pos) - this.kernel.half + 1));
    this.buf = this.buf.slice(keep - this.base);
    this.base = keep;
    return { echoes, started };
  }
}
