"""Polyphase FIR resampling for our fixed ratios (taps designed in ``fir_design.py``), pure numpy.

A resampler by up/down ("L/M") with taps h at rate_in × L computes the causal output
``y[n] = Σ_i x[i] · h[n·M − i·L]``. Its state per call is the last ``history`` input samples and a
counter (and the input buffer one-call filtering reuses). Output for a chunk is one matrix product:
outputs are taken in groups of ``group``, each group's inputs are one window of ``width`` samples, so
the windows are the rows of a strided view of [history, chunk] and ``windows @ table`` gives every
output of the chunk. The same product serves many calls at once (one row block per call), which is
how the transcoder filters a whole wake-up.

Output is time-aligned: the filter's group delay (``delay`` output samples) is withheld at the start
and handed out by ``flush``, so a stream of T input samples gives exactly ceil(T × L / M) samples.
The taps are multiples of 2^-24, so every sum is exact in float64: chunking and batching cannot
change a single bit of the output.
"""

from __future__ import annotations

import numpy as np

from common import fir_taps, g711

GROUP = 16  # outputs per window: bigger wastes multiplications on zeros, smaller costs more windows
KEPT_SAMPLES = 2048  # a resampler keeps its input buffer between chunks up to this size (16 KiB)


class FirDesign:
    """Everything about one ratio that does not change per call: taps, geometry, the product table."""

    def __init__(self, name: str, group: int = GROUP):
        rate_in, rate_out, up, down, taps = fir_taps.FILTERS[name]
        self.name, self.rate_in, self.rate_out, self.up, self.down = name, rate_in, rate_out, up, down
        self.taps = np.asarray(taps, np.float64) / 2.0 ** fir_taps.QUANTUM_BITS
        n_taps = len(self.taps)
        per_phase = -(-n_taps // up)
        self.delay = (n_taps - 1) // (2 * down)  # output samples; whole by design
        self.group = group - group % up  # a group starts on phase 0 of the polyphase pattern
        self.step = self.group * down // up  # inputs between the starts of two groups
        self.width = (self.group - 1) * down // up + per_phase
        self.history = per_phase - 1 + -(-(up - 1) * down // up)
        self.reach = per_phase - 1  # inputs a group's window reaches back before its first output
        # table[k, r]: weight of window sample k in output r of a group.
        k = np.arange(self.width)[:, None]
        tap = np.arange(self.group)[None, :] * down + (self.reach - k) * up
        self.table = np.where((tap >= 0) & (tap < n_taps), self.taps[np.clip(tap, 0, n_taps - 1)], 0.0)

    def gain_bound(self) -> float:
        """The largest |output| / |input| any input can produce (sum of |taps| of the worst phase)."""
        return float(np.abs(self.table).sum(axis=0).max())

    def plan(self, consumed: int, n: int) -> tuple[int, int, int, int]:
        """For a chunk of ``n`` inputs after ``consumed``: (first output computed, outputs due after it,
        offset of the first window in [history, chunk], groups)."""
        done = -(-consumed * self.up // self.down)  # outputs already given (causal count)
        due = -(-(consumed + n) * self.up // self.down)
        first = done - done % self.up
        offset = self.history + first * self.down // self.up - self.reach - consumed
        return first, due, offset, -(-(due - first) // self.group)

    def apply(self, buf: np.ndarray, offset: int, groups: int) -> np.ndarray:
        """The outputs of ``groups`` groups for each row of ``buf`` (calls × samples), as rows."""
        calls, size = buf.shape
        windows = np.ndarray((calls, groups, self.width), np.float64, buf, offset * 8,
                             (size * 8, self.step * 8, 8))
        return np.dot(windows.reshape(calls * groups, self.width), self.table).reshape(calls, -1)


class FirResampler:
    """One call, one direction. ``process``/``flush``/``reset`` as every engine; ``filter`` and
    ``filter_many`` are the float64 core the transcoder batches with."""

    batched = True

    def __init__(self, design: FirDesign):
        self.design = design
        self.rate_in, self.rate_out = design.rate_in, design.rate_out
        self.ratio = design.rate_out / design.rate_in
        self._buf, self._windows_of, self._windows = np.zeros(0), None, None  # ``filter``'s, reused
        self.reset()

    def reset(self) -> None:
        self._history = np.zeros(self.design.history)
        self._consumed = 0  # input samples since the last reset (Python int: never overflows)

    def batch_key(self, n: int) -> tuple:
        """Resamplers with equal keys can share one ``filter_many`` step."""
        return self.design.name, n, self._consumed % self.design.down

    def filter(self, x: np.ndarray) -> np.ndarray:
        """float samples in (int16 scale), unrounded float64 samples out. ``filter_many`` for one call,
        with one-dimensional arrays: at one frame per wake-up, numpy's per-call overhead is the cost, so
        the [history, chunk, padding] buffer and its window view are kept from one chunk to the next
        (up to KEPT_SAMPLES: one long chunk must not bloat the call's state for good)."""
        d, n, history = self.design, len(x), self.design.history
        first, due, offset, groups = d.plan(self._consumed, n)
        done = -(-self._consumed * d.up // d.down)
        size = max(history + n, offset + (groups - 1) * d.step + d.width)
        if len(self._buf) < size <= KEPT_SAMPLES:
            self._buf, self._windows_of = np.zeros(size), None
        buf = self._buf if len(self._buf) >= size else np.zeros(size)
        buf[:history] = self._history
        buf[history:history + n] = x  # what lies past it feeds only outputs beyond ``due``
        if buf is not self._buf:
            windows = np.ndarray((groups, d.width), np.float64, buf, offset * 8, (d.step * 8, 8))
        elif self._windows_of != (offset, groups):
            self._windows_of = (offset, groups)
            windows = self._windows = np.ndarray((groups, d.width), np.float64, buf, offset * 8,
                                                 (d.step * 8, 8))
        else:
            windows = self._windows
        y = np.dot(windows, d.table).reshape(-1)[max(done, d.delay) - first:due - first] if groups \
            else np.zeros(0)
        self._history = buf[n:n + history]  # a view: the next chunk copies it to the buffer's front
        if buf is not self._buf:
            self._history = self._history.copy()
        self._consumed += n
        return y

    def process(self, pcm: np.ndarray) -> np.ndarray:
        return to_int16(self.filter(pcm))

    def flush_float(self) -> np.ndarray:
        """The withheld tail (the group delay), so the stream totals ceil(T × ratio); then reset."""
        d, consumed = self.design, self._consumed
        if consumed == 0:
            return np.zeros(0)
        total = -(-consumed * d.up // d.down) + d.delay  # causal outputs that cover the input
        zeros = (total - 1) * d.down // d.up + 1 - consumed  # inputs that complete them
        given = max(0, -(-consumed * d.up // d.down) - d.delay)
        tail = self.filter(np.zeros(zeros))
        self.reset()
        return tail[:total - d.delay - given]

    def flush(self) -> np.ndarray:
        return to_int16(self.flush_float())

    def state_bytes(self) -> int:
        """The memory this call's state holds on to: its history, or the buffer (or this call's share of
        a batch's histories) that the history is a view of."""
        base = self._history.base
        if base is None:
            return self._history.nbytes
        return base.nbytes // base.shape[0] if base.ndim == 2 else base.nbytes


def in_step(resamplers: list[FirResampler]) -> bool:
    """Whether resamplers of one design are at the same point of its polyphase pattern (then chunks of
    one length make equal ``batch_key``s): ``batch_key``'s question for many, at a quarter of its cost."""
    down = resamplers[0].design.down
    return len({r._consumed % down for r in resamplers}) == 1


def filter_many(resamplers: list[FirResampler], x: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Row i of ``x`` (calls × n, float64) through ``resamplers[i]``; all must share one ``batch_key``.
    Returns (out, skips): resampler i's output is ``out[i, skips[i]:]`` (skips is 0 once a stream is
    past its group delay)."""
    d = resamplers[0].design
    calls, n = x.shape
    first, due, offset, groups = d.plan(resamplers[0]._consumed, n)
    size = max(d.history + n, offset + (groups - 1) * d.step + d.width) if groups else d.history + n
    buf = np.zeros((calls, size))
    buf[:, :d.history] = resamplers[0]._history if calls == 1 else [r._history for r in resamplers]
    buf[:, d.history:d.history + n] = x
    done = -(-resamplers[0]._consumed * d.up // d.down)
    out = d.apply(buf, offset, groups)[:, done - first:due - first] if groups else np.zeros((calls, 0))
    consumed = [r._consumed for r in resamplers]
    if min(consumed) * d.up >= d.delay * d.down:  # every stream is past its group delay (the usual case)
        skips = [0] * calls
    else:  # causal outputs before this chunk: the group delay is withheld once
        skips = [min(max(0, d.delay - -(-c * d.up // d.down)), due - done) for c in consumed]
    for r, history in zip(resamplers, buf[:, n:n + d.history].copy()):
        r._history = history
        r._consumed += n
    return out, skips


def to_int16(y: np.ndarray) -> np.ndarray:
    """Round half up and saturate (the taps bound |y| below g711.WIDE, see ``gain_bound``)."""
    return g711.CLIP_WIDE[g711.wide_index(y)]
