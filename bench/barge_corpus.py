"""The barge-in bench's labelled corpus (bench/barge_in.py), built from synthetic speech.

Voices are espeak-ng's (Debian's ``espeak-ng`` package), several speakers, speeds and pitches. The
caller's side goes the way a phone call's does: 8 kHz, µ-law and back, then the transcoder's 8 → 16
kHz FIR. The model's voice is made at 24 kHz, as Gemini sends it, and leaks back into the caller's
side 20 dB down, 250 ms after the model_client reckons it plays. The line carries one of three noises, scaled to an SNR against the
caller's speech level: babble (six other espeak talkers at once), pink noise, and line hum (odd
harmonics of 60 Hz with hiss), all band-limited to the telephone band; and bursts: a quiet line (30 dB
under them) onto which 0.3–1.5 s of hiss, pink noise or hum break every few seconds, the bursts at the
SNR (a handset rubbed, a door, the line crackling).

Each trial is one model turn heard by a fresh session: ``LEAD_S`` of line noise first, then the turn
plays while the caller says nothing, says backchannels, or interrupts and keeps talking.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import wave
from dataclasses import dataclass, field

import numpy as np
import samplerate

from common.g711 import decode_ulaw, encode_ulaw, float_to_int16
from common.resample import one_shot

RATE, MODEL_RATE = 16000, 24000
SPEECH_DBFS = -20.0  # the caller's speech level (RMS of the utterance)
MODEL_DBFS = -16.0
ECHO_DB, ECHO_DELAY_S = -20.0, 0.25
LEAD_S = 2.0  # line noise before the model's turn starts
BACKCHANNEL_MAX_S = 0.4
FRAME = 320  # 20 ms at 16 kHz
BURST_S = (0.3, 1.5)
BURST_GAP_S = (1.0, 3.0)

# What an interrupting caller says: they keep talking (no pause in the first half second; a caller who
# stops after one word is heard when they go on).
SENTENCES = [
    "I think that is not what I asked for at all", "Can I change the delivery address first please",
    "I meant the other account the savings one", "I need to ask you something else before that",
    "I would like to speak to a real person please", "You said Tuesday but I really need it on Monday",
    "That is the wrong order number you have there", "Can you repeat the last part more slowly",
    "I already tried restarting it twice this morning", "My card number ends in four four seven two",
    "Let me get a pen and write that down first", "That price is higher than what I was quoted yesterday",
    "Hang on my daughter is asking me something", "I don't think that is right could you check again",
    "Please cancel the whole thing and start over", "What time does the store close on Sundays",
]
BOT_SENTENCES = [
    "Thanks for calling. I can help you with your order, your account, or a delivery.",
    "Your package left our warehouse this morning and should arrive within two business days.",
    "I have found your account. The balance is forty two dollars and ten cents, due on the fifth.",
    "To change your address I will need the postcode and the name on the account, please.",
]
BACKCHANNELS = ["uh-huh", "mm-hm", "okay", "yeah", "right", "mhm", "sure", "ok"]
VOICES = ["en-us", "en", "en-gb-x-rp", "en-us+f3", "en+m3", "en-us+f2", "en-029", "en+f4", "en-gb-scotland+m5"]
NOISES = ("babble", "pink", "line", "bursts")
BAND_HZ = (300.0, 3400.0)


class NoEspeak(RuntimeError):
    pass


def espeak(text: str, voice: str, speed: int, pitch: int) -> tuple[np.ndarray, int]:
    """Speak ``text``: float samples on the int16 scale and their rate (espeak-ng's own, 22050 Hz)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise NoEspeak("espeak-ng is not installed: apt-get install -y espeak-ng")
    wav = subprocess.run([exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
                         check=True, capture_output=True).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate, x = w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return trim(x.astype(np.float64), rate), rate


def trim(x: np.ndarray, rate: int) -> np.ndarray:
    """Without leading and trailing silence (5 ms blocks more than 40 dB under the loudest)."""
    block = rate // 200
    n = len(x) // block
    levels = np.sqrt(np.mean(x[:n * block].reshape(n, block) ** 2, axis=1)) + 1e-9
    loud = np.flatnonzero(levels > levels.max() * 10 ** (-40 / 20))
    return x[loud[0] * block:(loud[-1] + 1) * block] if len(loud) else x[:0]


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    return samplerate.resample(x / 32768.0, rate_out / rate_in, "sinc_medium") * 32768.0


def over_the_phone(x: np.ndarray, rate: int) -> np.ndarray:
    """What the model_client gets of a caller's sound: 8 kHz µ-law, then the transcoder's 8 → 16 kHz."""
    ulaw = encode_ulaw(float_to_int16(resample(x, rate, 8000)))
    return one_shot("up_8k_to_16k", decode_ulaw(ulaw))


def at_level(x: np.ndarray, dbfs: float) -> np.ndarray:
    rms = np.sqrt(np.mean(x ** 2)) or 1.0
    return x * (32768 * 10 ** (dbfs / 20) / rms)


def caller_speech(text: str, rng: np.random.Generator, speed: tuple[int, int] = (150, 190)) -> np.ndarray:
    x, rate = espeak(text, str(rng.choice(VOICES)), int(rng.integers(*speed)), int(rng.integers(30, 70)))
    return at_level(over_the_phone(x, rate), SPEECH_DBFS)


def backchannel(rng: np.random.Generator) -> np.ndarray:
    """A short "uh-huh", "mm-hm", "okay"…, at most ``BACKCHANNEL_MAX_S`` long (spoken faster until it is)."""
    text, voice, pitch = str(rng.choice(BACKCHANNELS)), str(rng.choice(VOICES)), int(rng.integers(30, 70))
    for speed in range(int(rng.integers(170, 230)), 700, 30):
        x, rate = espeak(text, voice, speed, pitch)
        if len(x) <= BACKCHANNEL_MAX_S * rate:
            return at_level(trim(over_the_phone(x, rate), RATE), SPEECH_DBFS)
    raise AssertionError(f"espeak-ng cannot say {text!r} in {BACKCHANNEL_MAX_S} s")


def bot_turn(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """The model's voice at 24 kHz, at least ``seconds`` long."""
    parts: list[np.ndarray] = []
    while sum(map(len, parts)) < seconds * MODEL_RATE:
        x, rate = espeak(str(rng.choice(BOT_SENTENCES)), "en-us+f3", 175, 55)
        parts += [resample(x, rate, MODEL_RATE), np.zeros(MODEL_RATE // 4)]
    return at_level(np.concatenate(parts), MODEL_DBFS)


def band_limited(x: np.ndarray) -> np.ndarray:
    spectrum = np.fft.rfft(x)
    hz = np.fft.rfftfreq(len(x), 1 / RATE)
    spectrum[(hz < BAND_HZ[0]) | (hz > BAND_HZ[1])] = 0
    return np.fft.irfft(spectrum, len(x))


def noise(kind: str, seconds: float, rng: np.random.Generator, babble_bank: list[np.ndarray]) -> np.ndarray:
    """``seconds`` of line noise at unit RMS scale (scaled by the caller)."""
    n = round(seconds * RATE)
    if kind == "pink":
        spectrum = np.fft.rfft(rng.standard_normal(n))
        hz = np.fft.rfftfreq(n, 1 / RATE)
        x = band_limited(np.fft.irfft(spectrum / np.sqrt(np.maximum(hz, 1.0)), n))
    elif kind == "line":
        t = np.arange(n) / RATE
        hum = sum(np.sin(2 * np.pi * 60 * h * t + rng.uniform(0, 2 * np.pi)) / h ** 0.5 for h in range(5, 40, 2))
        x = band_limited(hum + 0.3 * rng.standard_normal(n))
    elif kind == "bursts":  # scaled so that the bursts, not the whole, have unit RMS
        x = 10 ** (-30 / 20) * band_limited(rng.standard_normal(n))
        at = int(rng.uniform(*BURST_GAP_S) * RATE)
        while at < n:
            length = min(int(rng.uniform(*BURST_S) * RATE), n - at)
            x[at:at + length] += noise(str(rng.choice(["pink", "line", "white"])), length / RATE, rng,
                                       babble_bank)[:length]
            at += length + int(rng.uniform(*BURST_GAP_S) * RATE)
        return x
    elif kind == "white":
        x = band_limited(rng.standard_normal(n))
    elif kind == "babble":
        x = np.zeros(n)
        for talker in range(6):
            voice = babble_bank[(talker + int(rng.integers(len(babble_bank)))) % len(babble_bank)]
            x += np.roll(np.resize(voice, n), int(rng.integers(n)))
    else:
        raise ValueError(kind)
    return x / np.sqrt(np.mean(x ** 2))


@dataclass
class Trial:
    """One model turn over one line: what the caller's side carries (16 kHz), the model's audio (24 kHz,
    starting at ``LEAD_S``), and when the caller's speech starts and ends (s, on the caller's clock)."""
    kind: str  # "noise" | "backchannel" | "interruption"
    noise: str
    snr_db: float
    caller: np.ndarray
    model: np.ndarray
    speech: list[tuple[float, float]] = field(default_factory=list)
    speech_db: list[np.ndarray] = field(default_factory=list)  # each utterance alone: dBFS per 20 ms

    @property
    def playing_s(self) -> float:
        return len(self.model) / MODEL_RATE


def trial(kind: str, noise_kind: str, snr_db: float, rng: np.random.Generator,
          babble_bank: list[np.ndarray], turn_s: float = 8.0) -> Trial:
    model = bot_turn(rng, turn_s)
    n = int(LEAD_S * RATE + len(model) * RATE / MODEL_RATE)
    line = noise(noise_kind, n / RATE, rng, babble_bank) * 32768 * 10 ** ((SPEECH_DBFS - snr_db) / 20)
    echo = resample(model, MODEL_RATE, RATE) * 10 ** (ECHO_DB / 20)
    start = int((LEAD_S + ECHO_DELAY_S) * RATE)
    line[start:start + len(echo)] += echo[:n - start]
    result = Trial(kind, noise_kind, snr_db, line, model)
    if kind == "interruption":
        at = LEAD_S + rng.uniform(1.0, 3.0)
        _add(result, caller_speech(str(rng.choice(SENTENCES)), rng), at)
    elif kind == "backchannel":
        at = LEAD_S + rng.uniform(0.5, 1.5)
        while at < LEAD_S + result.playing_s - 1.0:
            _add(result, backchannel(rng), at)
            at += rng.uniform(1.5, 2.5)
    return result


def _add(t: Trial, voice: np.ndarray, at: float) -> None:
    i = int(at * RATE)
    voice = voice[:max(0, len(t.caller) - i)]
    t.caller[i:i + len(voice)] += voice
    t.speech.append((at, at + len(voice) / RATE))
    frames = len(voice) // FRAME
    power = np.mean(voice[:frames * FRAME].reshape(frames, FRAME) ** 2, axis=1) / 32768 ** 2
    t.speech_db.append(10 * np.log10(power + 1e-12))


def evidence_s(t: Trial) -> float | None:
    """The earliest an interruption can be told from a backchannel by its sound (s from its start): the
    end of its first 20 ms frame that begins after ``BACKCHANNEL_MAX_S`` in which the caller's voice
    alone is louder than the line's noise. A backchannel has ended by then; before it, a caller who
    goes on talking and one who said "uh-huh" sound alike."""
    noise_dbfs = SPEECH_DBFS - t.snr_db
    first = round(BACKCHANNEL_MAX_S * RATE / FRAME)
    loud = np.flatnonzero(t.speech_db[0][first:] > noise_dbfs)
    return (first + loud[0] + 1) * FRAME / RATE if len(loud) else None


def corpus(seed: int = 1, per_condition: int = 12, snrs: tuple[float, ...] = (20.0, 10.0, 5.0)) -> list[Trial]:
    """Every noise at every SNR: ``per_condition`` interruptions, and half as many turns each of noise
    alone and of backchannels."""
    rng = np.random.default_rng(seed)
    bank = [over_the_phone(*espeak(s, VOICES[i % len(VOICES)], 170, 50)) for i, s in enumerate(SENTENCES)]
    trials = []
    for noise_kind in NOISES:
        for snr in snrs:
            for kind, count in (("interruption", per_condition), ("noise", per_condition // 2),
                                ("backchannel", per_condition // 2)):
                trials += [trial(kind, noise_kind, snr, rng, bank) for _ in range(count)]
    return trials
