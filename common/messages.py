"""The one wire schema between our processes: a closed set of message types, packed with msgpack.

A ZeroMQ message carries one *batch*: a msgpack array of messages, each ``[tag, field, ...]`` with
fields in declaration order. Batches are how a stage sends everything that is ready in one pass
(docs/architecture.md#the-links). The decoder maps the integer tag to a type from ``TYPES`` and
checks every field's type; anything else is a ``WireError``. A type is never picked by a name read off
the wire.

Consecutive audio messages of one type for different calls (a batch's usual content: one frame of each
of many calls) travel as one ``AudioRun``: their fields as columns and their audio back to back. That
is an encoding, not a new meaning: ``pack`` forms runs by itself and ``unpack`` hands back the single
messages, unless the receiver asks for the runs (the transcoder, which filters a run as one block).

Audio rides as raw bytes. Audio messages carry ``seq`` (per call, per direction) and ``t_in``, the
``time.monotonic_ns()`` at which the frame entered the pipeline (the gateway for the up path, the
model_client for the down path); CLOCK_MONOTONIC is system-wide, so every hop on one host can be timed.
"""

from __future__ import annotations

import operator
import reprlib
from dataclasses import dataclass, fields
from typing import ClassVar

import msgpack

PROTOCOL_VERSION = 1
LIVENESS = 3  # a peer silent for this many heartbeat intervals is dead (Paranoid Pirate)
FRAMES_PER_S = 50  # audio frames a call sends each way a second: Twilio's 20 ms

ROLE_TRANSCODER = "transcoder"
ROLE_MODEL_CLIENT = "model_client"
ROLE_GATEWAY = "gateway"

# A model_client's Gemini backend, as its Stats report it (model_client/backend_check.py): being checked,
# up, or down for one of three reasons. A transcoder reports "".
BACKEND_CHECKING = "checking"
BACKEND_UP = "up"
BACKEND_UNREACHABLE = "unreachable"
BACKEND_KEY_REFUSED = "key_refused"
BACKEND_SETUP_REFUSED = "setup_refused"
BACKEND_DOWN = (BACKEND_UNREACHABLE, BACKEND_KEY_REFUSED, BACKEND_SETUP_REFUSED)


class WireError(ValueError):
    """A batch that does not follow this schema. Between our own processes that is a bug."""


# --- link control -----------------------------------------------------------------------------

@dataclass(slots=True)
class Hello:
    """Sent on every (re)connect. A new ``epoch`` means "everything I held is gone"."""
    TAG: ClassVar[int] = 1
    role: str
    epoch: str
    capacity: int
    endpoint: str  # where this peer can be reached ("" if it binds nothing)
    version: int = PROTOCOL_VERSION


@dataclass(slots=True)
class Heartbeat:
    TAG: ClassVar[int] = 2
    epoch: str
    load: int  # calls currently held


# --- per call ---------------------------------------------------------------------------------

@dataclass(slots=True)
class CallStart:
    TAG: ClassVar[int] = 3
    call: str
    call_sid: str
    stream_sid: str
    params: dict  # Twilio customParameters, str -> str
    model: str  # the model_client endpoint the transcoder forwards to
    resume_handle: str = ""
    resume: bool = False  # the call is live: re-pinned (new transcoder) or re-assigned (new model_client)
    turn: int = 0  # on re-assignment: the newest turn id the gateway has seen; new turns number after it


@dataclass(slots=True)
class AudioIn:
    """gateway → transcoder: caller audio, µ-law 8 kHz."""
    TAG: ClassVar[int] = 4
    call: str
    seq: int
    t_in: int
    audio: bytes
    ts: int = 0  # Twilio media.timestamp, ms since the stream started


@dataclass(slots=True)
class AudioUp:
    """transcoder → model_client: caller audio, PCM16 LE 16 kHz."""
    TAG: ClassVar[int] = 5
    call: str
    seq: int
    t_in: int
    audio: bytes


@dataclass(slots=True)
class AudioDown:
    """model_client → transcoder: model audio, PCM16 LE 24 kHz."""
    TAG: ClassVar[int] = 6
    call: str
    seq: int
    t_in: int
    audio: bytes
    turn: int


@dataclass(slots=True)
class AudioOut:
    """transcoder → gateway: model audio, µ-law 8 kHz."""
    TAG: ClassVar[int] = 7
    call: str
    seq: int
    t_in: int
    audio: bytes
    turn: int


@dataclass(slots=True)
class Interrupt:
    """The caller barged in: drop every queued piece of ``turn``; the gateway sends Twilio ``clear``."""
    TAG: ClassVar[int] = 8
    call: str
    turn: int


@dataclass(slots=True)
class TurnDone:
    """The model finished ``turn``: flush the resampler tail; the gateway sends a Twilio ``mark``."""
    TAG: ClassVar[int] = 9
    call: str
    turn: int


@dataclass(slots=True)
class Played:
    """A mark came back: the caller's playback passed ``mark`` of ``turn`` (or a clear flushed it).
    ``heard_ms`` is how much of the turn the caller has heard so far."""
    TAG: ClassVar[int] = 10
    call: str
    turn: int
    mark: str
    cleared: bool = False
    heard_ms: int = 0
    finished: bool = False  # nothing of the turn is left to play: the caller has heard it out (or it was cleared)


@dataclass(slots=True)
class Dtmf:
    TAG: ClassVar[int] = 11
    call: str
    digit: str


@dataclass(slots=True)
class Transcript:
    TAG: ClassVar[int] = 12
    call: str
    role: str  # "caller" or "model"
    text: str
    final: bool
    turn: int = 0  # for the model's words: the turn they belong to


@dataclass(slots=True)
class Resumption:
    """The latest resumable Gemini session handle; the gateway keeps it for re-assignment. ``upto`` is
    the ``t_in`` of the newest caller audio the session had sent when the handle came: audio after it
    may not be in the handle's state, so the gateway keeps it to replay (gateway/replay.py)."""
    TAG: ClassVar[int] = 13
    call: str
    handle: str
    upto: int = 0


@dataclass(slots=True)
class Action:
    TAG: ClassVar[int] = 14
    call: str
    kind: str  # "hangup" | "transfer" | "hold" (target "on"/"off": the model waits on a tool) | "stalled"
    target: str = ""


@dataclass(slots=True)
class CallEnd:
    TAG: ClassVar[int] = 15
    call: str
    reason: str


@dataclass(slots=True)
class CallerSpeech:
    """tc/mc → gw: the caller started speaking (local VAD, or Gemini's voice-activity signal). If the
    model's audio is still playing, the gateway barges in itself: Gemini sends no ``interrupted``
    for a turn it has already finished generating."""
    TAG: ClassVar[int] = 16
    call: str
    source: str  # "vad" | "gemini"


@dataclass(slots=True)
class Stats:
    """tc/mc → gw, every few seconds: the stage's cumulative counters, its gauges, and its histograms
    (``common/stats.py``), for the gateway's ``/metrics``; from a model_client also its Gemini backend's
    state, sent at once when it changes (``/readyz``, ``/twiml``). Values are checked where they are read."""
    TAG: ClassVar[int] = 17
    counters: dict  # name -> int, only ever growing
    gauges: dict  # name -> int, now
    histograms: dict  # name -> [count per bucket..., sum × 1000]
    backend: str = ""  # a model_client's Gemini backend: BACKEND_CHECKING, _UP or one of BACKEND_DOWN
    backend_why: str = ""  # what its last check or connection attempt said


_AUDIO_TYPES = (AudioIn, AudioUp, AudioDown, AudioOut)
_AUDIO_TAGS = tuple(cls.TAG for cls in _AUDIO_TYPES)
_EXTRA = {AudioIn.TAG: "ts", AudioDown.TAG: "turn", AudioOut.TAG: "turn"}  # the field after ``audio``


@dataclass(slots=True)
class AudioRun:
    """Audio messages of one type (``kind``, their TAG), one per call, as columns: ``audio`` is their
    audio back to back, ``sizes`` cuts it, ``extra`` is the field after ``audio`` (AudioIn's ``ts``,
    AudioDown's and AudioOut's ``turn``; empty for AudioUp). The order of the messages is kept."""
    TAG: ClassVar[int] = 18
    kind: int
    calls: list
    seqs: list
    t_ins: list
    sizes: list
    audio: bytes
    extra: list

    @classmethod
    def of(cls, msgs: list) -> AudioRun:
        """The run of ``msgs``: audio messages of one type, each for a different call."""
        kind = msgs[0].TAG
        extra = [getattr(msg, _EXTRA[kind]) for msg in msgs] if kind in _EXTRA else []
        return cls(kind, [msg.call for msg in msgs], [msg.seq for msg in msgs],
                   [msg.t_in for msg in msgs], [len(msg.audio) for msg in msgs],
                   b"".join([msg.audio for msg in msgs]), extra)

    def messages(self) -> list:
        """The run's single messages, in order."""
        columns = [self.calls, self.seqs, self.t_ins, self.chunks()] + ([self.extra] if self.extra else [])
        return [TYPES[self.kind](*fields) for fields in zip(*columns)]

    def take(self, rows: list[int]) -> AudioRun:
        """The run of just the messages at ``rows`` (indices, in order)."""
        chunks = self.chunks()
        return AudioRun(self.kind, [self.calls[i] for i in rows], [self.seqs[i] for i in rows],
                        [self.t_ins[i] for i in rows], [self.sizes[i] for i in rows],
                        b"".join([chunks[i] for i in rows]),
                        [self.extra[i] for i in rows] if self.extra else [])

    def chunks(self) -> list[bytes]:
        """Each message's audio."""
        return cut(self.audio, self.sizes)

    def check(self) -> None:
        """Raises WireError unless the columns make a valid run."""
        n = len(self.calls)
        if self.kind not in _AUDIO_TAGS:
            raise WireError(f"AudioRun of tag {self.kind}: not an audio message")
        if not n or len(self.seqs) != n or len(self.t_ins) != n or len(self.sizes) != n \
                or len(self.extra) != (n if self.kind in _EXTRA else 0):
            raise WireError(f"AudioRun columns of unequal lengths ({n} calls)")
        for name, column, kind in (("calls", self.calls, str), ("seqs", self.seqs, int),
                                   ("t_ins", self.t_ins, int), ("sizes", self.sizes, int),
                                   ("extra", self.extra, int)):
            if column and set(map(type, column)) != {kind}:
                raise WireError(f"AudioRun {name} must all be {kind.__name__}")
        if len(set(self.calls)) != n:
            raise WireError("AudioRun holds a call twice")
        if min(self.sizes) < 0 or sum(self.sizes) != len(self.audio):
            raise WireError(f"AudioRun sizes do not cut its {len(self.audio)} bytes of audio")


def cut(blob: bytes, sizes: list[int]) -> list[bytes]:
    """``blob`` cut into pieces of ``sizes`` bytes (an AudioRun's audio into each message's)."""
    out, start = [], 0
    for size in sizes:
        out.append(blob[start:start + size])
        start += size
    return out


Message = (Hello | Heartbeat | CallStart | AudioIn | AudioUp | AudioDown | AudioOut | Interrupt
           | TurnDone | Played | Dtmf | Transcript | Resumption | Action | CallEnd | CallerSpeech | Stats
           | AudioRun)

TYPES: dict[int, type] = {cls.TAG: cls for cls in (
    Hello, Heartbeat, CallStart, AudioIn, AudioUp, AudioDown, AudioOut, Interrupt, TurnDone, Played,
    Dtmf, Transcript, Resumption, Action, CallEnd, CallerSpeech, Stats, AudioRun)}
assert len(TYPES) == 18, "duplicate tag"

_PY_TYPES = {"str": str, "int": int, "bytes": bytes, "bool": bool, "dict": dict, "list": list}


def _layout(cls: type) -> tuple[operator.attrgetter, tuple[type, ...], int]:
    """(getter of all fields in order, each field's type, how many fields are required)."""
    fs = fields(cls)
    names = [f.name for f in fs]
    required = sum(1 for f in fs if f.default is f.default_factory)  # both MISSING
    return operator.attrgetter(*names), tuple(_PY_TYPES[f.type] for f in fs), required


_LAYOUT = {tag: _layout(cls) for tag, cls in TYPES.items()}


def _fields_of(msg) -> tuple:
    got = _LAYOUT[msg.TAG][0](msg)
    return got if isinstance(got, tuple) else (got,)


def pack(batch: list) -> bytes:
    """One ZeroMQ frame holding every message in ``batch``, consecutive audio messages as runs."""
    return msgpack.packb([(m.TAG, *_fields_of(m)) for m in runs_of(batch)], use_bin_type=True)


def runs_of(batch: list) -> list:
    """``batch`` with each stretch of two or more audio messages of one type, for different calls, as
    an AudioRun (a call met again starts a new run: its frames must stay in order)."""
    out, run, calls = [], [], set()
    for msg in batch:
        if run and (type(msg) is not type(run[0]) or msg.call in calls):
            out.append(run[0] if len(run) == 1 else AudioRun.of(run))
            run, calls = [], set()
        if type(msg) in _AUDIO_TYPES:
            run.append(msg)
            calls.add(msg.call)
        else:
            out.append(msg)
    if run:
        out.append(run[0] if len(run) == 1 else AudioRun.of(run))
    return out


def unpack(frame: bytes, runs: bool = False) -> list:
    """The messages in one frame; AudioRuns are split into their messages unless ``runs``. Raises
    WireError for anything outside the schema."""
    try:
        items = msgpack.unpackb(frame, raw=False, use_list=True, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types for bad input
        raise WireError(f"not msgpack: {type(e).__name__}: {e}") from None
    if not isinstance(items, list):
        raise WireError(f"batch must be an array, got {type(items).__name__}")
    batch = [_decode(item) for item in items]
    if runs or not any(type(msg) is AudioRun for msg in batch):
        return batch
    return [one for msg in batch for one in (msg.messages() if type(msg) is AudioRun else (msg,))]


def _decode(item) -> Message:
    if not isinstance(item, list) or not item or type(item[0]) is not int:
        raise WireError(f"message must be [tag, ...], got {_short(item)}")
    tag, values = item[0], item[1:]
    layout = _LAYOUT.get(tag)
    if layout is None:
        raise WireError(f"unknown message tag {tag}")
    cls = TYPES[tag]
    _, types, required = layout
    if not required <= len(values) <= len(types):
        raise WireError(f"{cls.__name__} takes {required}..{len(types)} fields, got {len(values)}")
    for value, expected in zip(values, types):
        if type(value) is not expected:
            raise WireError(f"{cls.__name__}: {_short(value)} is not {expected.__name__}")
    msg = cls(*values)
    if cls is AudioRun:
        msg.check()
    return msg


def _short(value) -> str:
    text = reprlib.repr(value)  # bounded depth: repr() of a frame nested ~1000 deep raises RecursionError
    return text if len(text) <= 60 else text[:57] + "..."
