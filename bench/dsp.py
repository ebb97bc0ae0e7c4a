"""Every resampler engine side by side: delay, passband flatness, rejection, stream-vs-one-shot error,
µs per 20 ms frame (the whole transcoder step: G.711 + resampling + conversions) for one call and
batched across calls, and bytes of state per call.

    python -m bench.dsp [--json docs/dsp.json] [--png docs/dsp-response.png] [--rounds 5] [--quick]

Quality is measured through each engine's streaming float core with 20 ms frames, the way the
transcoder uses it before G.711: tones at -10 dBFS, levels read with a Kaiser-windowed projection (side
lobes below -150 dB). Delay and the stream-vs-one-shot error use the int16 interface. Times are this
thread's CPU time (time spent preempted by the box's other tenants does not count), median over blocks
of frames. The box's speed still drifts by 2× from one minute to the next, so one call's step is timed
in ``--rounds`` rounds, the engines taken in turn, and the median round is reported (each round's
figure is in the JSON); compare engines within one run. The plot needs matplotlib (the
``bench`` extra). Run it with OPENBLAS_NUM_THREADS=1, as a transcoder (one core) should run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.report import save_report
from common import g711, resample
from transcoder.call_audio import CallAudio, caller_audio_many, model_audio_many

AMPLITUDE = 10000.0
# Tones are kept off round frequencies, so no tone's alias or image falls exactly on a round
# frequency another measurement (or a quantised input's periodic error) uses.
OFFSET_HZ = 3.7
PATHS = {  # direction: (resampler name, passband, frequencies whose aliases/images must be rejected)
    "up 8k→16k": ("up_8k_to_16k", (300, 3400), np.arange(300, 3400, 50)),
    "down 24k→8k": ("down_24k_to_8k", (300, 3400), np.arange(4600, 11951, 50)),
}
CHUNKS = [[1], [7], [160], [161], [479], [3, 500, 17, 1, 320]]


def level_db(y: np.ndarray, hz: float, rate: int) -> float:
    w = np.kaiser(len(y), 20.0)
    amplitude = 2 * abs(np.sum(y * w * np.exp(-2j * np.pi * hz * np.arange(len(y)) / rate))) / np.sum(w)
    return float(20 * np.log10(amplitude / AMPLITUDE + 1e-15))


def streamed(name: str, engine: str, x: np.ndarray, sizes=(None,), flush=False) -> np.ndarray:
    r = resample.make(name, engine)
    sizes = [s or r.rate_in // 50 for s in sizes]
    out, i, k = [], 0, 0
    while i < len(x):
        out.append(r.process(x[i:i + sizes[k % len(sizes)]]))
        i, k = i + sizes[k % len(sizes)], k + 1
    return np.concatenate(out + ([r.flush()] if flush else []))


def tone_through(name: str, engine: str, hz: float) -> np.ndarray:
    """The steady part of a tone streamed through the engine's float core in 20 ms frames (what the
    transcoder feeds G.711). Not through int16: an alias at -90 dB is a third of an int16 step, and
    rounding would hide it. Keep ``hz`` off round numbers (see OFFSET_HZ)."""
    r = resample.make(name, engine)
    x = AMPLITUDE * np.sin(2 * np.pi * hz * np.arange(r.rate_in // 2) / r.rate_in)
    frame = r.rate_in // 50
    y = np.concatenate([r.filter(x[i:i + frame]) for i in range(0, len(x), frame)])
    return y[r.rate_out // 20:-r.rate_out // 20]


def response(name: str, engine: str, step_hz: int) -> tuple[list, list]:
    """(Hz, level dB) of the curve the plot shows: each tone's level at the output (its alias, going
    down), and going up its image too, at rate_in - Hz."""
    r = resample.make(name, engine)
    top = r.rate_in // 2 if r.rate_in > r.rate_out else r.rate_out // 2
    freqs, gains = [], []
    for hz in np.arange(step_hz, top, step_hz) + OFFSET_HZ:
        if r.rate_in > r.rate_out:  # down: a tone above the output's Nyquist shows as its alias
            y = tone_through(name, engine, hz)
            out_hz = abs(hz - r.rate_out * round(hz / r.rate_out))
            freqs.append(hz)
            gains.append(level_db(y, out_hz, r.rate_out))
        elif hz < r.rate_in // 2:  # up: the tone's gain at hz and its image at rate_in - hz
            y = tone_through(name, engine, hz)
            freqs += [hz, r.rate_in - hz]
            gains += [level_db(y, hz, r.rate_out), level_db(y, r.rate_in - hz, r.rate_out)]
    order = np.argsort(freqs)
    return [round(float(freqs[i]), 1) for i in order], [gains[i] for i in order]


def quality(direction: str, engine: str) -> dict:
    name, (lo, hi), rejected = PATHS[direction]
    r = resample.make(name, engine)
    band = [level_db(tone_through(name, engine, hz), hz, r.rate_out) for hz in range(lo, hi + 1, 100)]
    leaks = []
    for hz in rejected + OFFSET_HZ:
        y = tone_through(name, engine, hz)
        leaks.append(level_db(y, r.rate_in - hz if r.rate_out > r.rate_in else
                              abs(hz - r.rate_out * round(hz / r.rate_out)), r.rate_out))
    return {"flatness_db": [round(min(band), 3), round(max(band), 3)], "rejection_db": round(-max(leaks), 1),
            "delay_ms": round(delay_ms(name, engine), 3), "stream_error_lsb": stream_error(name, engine)}


def delay_ms(name: str, engine: str) -> float:
    """Group delay (where an impulse comes out, against where it went in) plus the most output ever
    withheld after a 20 ms frame, in ms."""
    r = resample.make(name, engine)
    frame = r.rate_in // 50
    x = np.zeros(frame * 20, np.int16)
    x[frame * 10 + frame // 2] = 16384
    outs, withheld = [], []
    for i in range(0, len(x), frame):
        outs.append(r.process(x[i:i + frame]))
        if i >= frame * 5:
            withheld.append((i + frame) * r.ratio - sum(map(len, outs)))
    y = np.concatenate(outs + [r.flush()]).astype(float)
    group = abs(np.argmax(np.abs(y)) / r.rate_out - (frame * 10 + frame // 2) / r.rate_in)
    return (group + max(withheld) / r.rate_out) * 1000


def stream_error(name: str, engine: str) -> int:
    x = (np.random.default_rng(1).standard_normal(4801) * 6000).clip(-32768, 32767).astype(np.int16)
    whole = streamed(name, engine, x, [len(x)], flush=True).astype(int)
    worst = 0
    for sizes in CHUNKS:
        got = streamed(name, engine, x, sizes, flush=True).astype(int)
        worst = max(worst, abs(len(got) - len(whole)) * 32768 or int(np.abs(got - whole).max()))
    return worst


def median_us(fn, repeats: int, block: int = 50) -> float:
    """Median over blocks of ``block`` calls of the CPU time (this thread's, so time spent preempted by
    the box's other tenants does not count) per call, in µs."""
    per_call = []
    for _ in range(max(5, repeats // block)):
        t = time.thread_time_ns()
        for _ in range(block):
            fn()
        per_call.append((time.thread_time_ns() - t) / block)
    return statistics.median(per_call) / 1000


ANCHOR_LUT_US = 0.75  # a quiet box: numpy LUT µ-law decode of 160 bytes, single (docs/performance.md)


def reference_us(frames: int) -> float:
    """The yardstick, timed now: how loaded the box is (a quiet box takes ANCHOR_LUT_US)."""
    codes = bytes(range(160))
    return median_us(lambda: g711.decode_ulaw(codes), frames)


def _frames() -> tuple[bytes, bytes]:
    """A 20 ms frame each way: µ-law at 8 kHz, PCM16 at 24 kHz (noise, so no shortcut applies)."""
    rng = np.random.default_rng(2)
    ulaw = g711.encode_ulaw((rng.standard_normal(160) * 3000).astype(np.int16))
    return ulaw, (rng.standard_normal(480) * 3000).astype("<i2").tobytes()


def single_us(engine: str, frames: int) -> tuple[float, float]:
    """One call's step, up and down, in µs."""
    (ulaw, pcm), call = _frames(), CallAudio("bench", "model", engine)
    return (median_us(lambda: call.caller_audio(ulaw), frames),
            median_us(lambda: call.model_audio(pcm, 1), frames))


def batched_us(engine: str, frames: int, n: int) -> tuple[float, float]:
    """Per call-frame, up and down, for ``n`` calls filtered as one AudioRun."""
    (ulaw, pcm), calls = _frames(), [CallAudio(f"c{i}", "model", engine) for i in range(n)]
    reps = max(25, frames // n)
    up = median_us(lambda: caller_audio_many(calls, ulaw * n, [len(ulaw)] * n), reps, 5) / n
    down = median_us(lambda: model_audio_many(calls, pcm * n, [len(pcm)] * n, [1] * n), reps, 5) / n
    return up, down


def speed(engines: list[str], frames: int, rounds: int) -> dict:
    """Each engine's timings. The box's speed drifts by 2× within a minute, so the single-call step is
    timed in ``rounds`` rounds taking the engines in turn, and its figure is the median round."""
    timed = {engine: [] for engine in engines}
    for _ in range(rounds):
        for engine in engines:
            timed[engine].append((reference_us(frames // rounds), *single_us(engine, frames // rounds)))
    result = {}
    for engine, runs in timed.items():
        reference, up, down = (statistics.median(column) for column in zip(*runs))
        result[engine] = {"reference_us": round(reference, 3), "single_up_us": round(up, 2),
                          "single_down_us": round(down, 2),
                          "single_up_us_rounds": [round(r[1], 2) for r in runs],
                          "single_down_us_rounds": [round(r[2], 2) for r in runs]}
        for n in [100, 1000] if engine == "fir" else []:
            up, down = batched_us(engine, frames, n)
            result[engine].update({f"batch{n}_up_us": round(up, 2), f"batch{n}_down_us": round(down, 2)})
    return result


def state_bytes(engine: str, n: int = 5000) -> int:
    """Resident memory per call (both directions, primed with one frame each), measured in a fresh
    interpreter (libsamplerate's C state is invisible to tracemalloc; RSS sees everything)."""
    code = f"from bench.dsp import _rss_per_call; print(_rss_per_call({engine!r}, {n}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1])
    return int(done.stdout.split()[-1])


def _rss_per_call(engine: str, n: int) -> int:
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    ulaw, pcm = bytes(160), bytes(960)
    CallAudio("warm", "model", engine).caller_audio(ulaw)  # imports, tables, first allocations
    before = rss()
    calls = [CallAudio(f"c{i}", "model", engine) for i in range(n)]
    for c in calls:
        c.caller_audio(ulaw)
        c.model_audio(pcm, 1)
    return round((rss() - before) / n)


def fir_state_bytes() -> int:
    """The FIR engine's own arrays per call after a frame each way, both directions."""
    call = CallAudio("c", "m")
    call.caller_audio(bytes(160))
    call.model_audio(bytes(960), 1)
    return call.up.state_bytes() + call.down.state_bytes()


def plot(curves: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5), gridspec_kw={"width_ratios": [2, 1]})
    for row, direction in enumerate(PATHS):
        full, zoom = axes[row]
        for engine, (hz, db) in curves[direction].items():
            style = {"lw": 2.2, "color": "black"} if engine == "fir" else {"lw": 1.2}
            full.plot(np.array(hz) / 1000, db, label=engine, **style)
            zoom.plot(np.array(hz) / 1000, db, label=engine, **style)
        name = PATHS[direction][0]
        full.set_title(f"{direction}: " + ("gain, then alias level, by input frequency" if "down" in name
                                           else "gain below 4 kHz, image level above"))
        full.axhline(-80, color="red", ls="--", lw=1)
        full.axvspan(0.3, 3.4, color="green", alpha=0.08)
        full.axvspan(4.6, 12.5, color="red", alpha=0.05)
        full.text(4.7, -77, "-80 dB target above 4.6 kHz", color="red", fontsize=9)
        full.set_ylim(-150, 10)
        full.set_xlim(0, max(max(hz) for hz, _ in curves[direction].values()) / 1000)
        full.set_xlabel("kHz")
        full.set_ylabel("dB re input")
        full.grid(alpha=0.3)
        full.legend(loc="lower left", fontsize=9)
        zoom.set_title("passband 300–3400 Hz (target ±0.5 dB)")
        zoom.set_xlim(0, 4.2)
        zoom.set_ylim(-10, 1.5)
        zoom.axhspan(-0.5, 0.5, color="green", alpha=0.12)
        zoom.axvspan(0.3, 3.4, color="green", alpha=0.05)
        zoom.set_xlabel("kHz")
        zoom.grid(alpha=0.3)
    fig.suptitle("Resampler engines, streamed in 20 ms frames (-10 dBFS tones, float core before G.711)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def table(rows: list[dict]) -> str:
    head = ["engine", "direction", "delay ms", "passband dB", "rejection dB", "stream err LSB",
            "µs/frame 1 call", "µs/frame ×100", "µs/frame ×1000", "state B/call", "box slowdown"]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        lines.append(" | ".join(str(v) for v in [
            r["engine"], r["direction"], r["delay_ms"], f"{r['flatness_db'][0]:+.2f}..{r['flatness_db'][1]:+.2f}",
            r["rejection_db"], r["stream_error_lsb"], r["single_us"], r.get("batch100_us", "—"),
            r.get("batch1000_us", "—"), r["state_bytes"], f"×{r['load_scale']}"]))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="resampler engines side by side")
    parser.add_argument("--json", default="docs/dsp.json")
    parser.add_argument("--png", default="docs/dsp-response.png")
    parser.add_argument("--frames", type=int, default=20000, help="timed frames per measurement")
    parser.add_argument("--engines", default=",".join(resample.ENGINES))
    parser.add_argument("--rounds", type=int, default=5, help="rounds of single-call timing, the engines "
                        "taken in turn in each; the median round is reported")
    parser.add_argument("--quick", action="store_true", help="fewer frames and plot points")
    args = parser.parse_args()
    frames = 2000 if args.quick else args.frames
    engines = args.engines.split(",")
    rows, curves = [], {d: {} for d in PATHS}
    print(f"speed: {args.rounds} rounds of {', '.join(engines)}…", flush=True)
    speeds = speed(engines, frames, max(1, args.rounds))
    for engine in engines:
        fast = speeds[engine]
        memory = state_bytes(engine)
        for direction, (name, _, _) in PATHS.items():
            print(f"[{engine}] {direction}: quality…", flush=True)
            key = "up" if direction.startswith("up") else "down"
            row = {"engine": engine, "direction": direction, **quality(direction, engine),
                   "single_us": fast[f"single_{key}_us"],
                   "single_us_rounds": fast[f"single_{key}_us_rounds"], "state_bytes": memory,
                   "reference_us": fast["reference_us"], "load_scale": round(fast["reference_us"] / ANCHOR_LUT_US, 2)}
            for n in (100, 1000):
                if f"batch{n}_{key}_us" in fast:
                    row[f"batch{n}_us"] = fast[f"batch{n}_{key}_us"]
            rows.append(row)
            hz, db = response(name, engine, 200 if args.quick else 50)
            curves[direction][engine] = (hz, db)
    print()
    print(table(rows))
    print(f"\nµs/frame: the whole transcoder step (G.711 + resampling + conversions), CPU time, median "
          f"(1 call: the median of {args.rounds} rounds, the engines taken in turn).\n"
          f"box slowdown: the yardstick (LUT decode of 160 bytes, {ANCHOR_LUT_US} µs on a quiet box) "
          "timed in each round, median; divide µs by it to compare with a quiet box.\n"
          f"FIR state arrays per call (both directions): {fir_state_bytes()} bytes; state B/call above is "
          "resident memory per CallAudio (both directions, Python objects included)")
    meta = {"python": platform.python_version(), "numpy": np.__version__, "cpu": platform.processor() or
            platform.machine(), "load_average": os.getloadavg(), "frames_timed": frames,
            "rounds": args.rounds,
            "fir_state_array_bytes": fir_state_bytes(),
            "command": " ".join(["python -m bench.dsp", *sys.argv[1:]])}
    save_report(args.json, {"meta": meta, "rows": rows})
    if args.png:  # --png "": no plot
        plot(curves, Path(args.png))
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
