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

Audio rides as raw bytes, with ``seq`` (per call, per direction) and ``t_in``: the monotonic ns at
which the frame entered the pipeline (docs/architecture.md#messages-between-the-processes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from common import wire_codec
from common.wire_codec import Schema, WireError, check_columns, cut, layout  # noqa: F401 (WireError: here too)

PROTOCOL_VERSION = 1
LIVENESS = 3  # a peer silent for this many heartbeat intervals is dead (Paranoid Pirate)
FRAMES_PER_S = 50  # audio frames a call sends each way a second: Twilio's 20 ms

ROLE_TRANSCODER, ROLE_MODEL_CLIENT, ROLE_GATEWAY = "transcoder", "model_client", "gateway"

# A model_client's Gemini backend, as its Stats report it (model_client/backend_check.py): being checked,
# up, or down for one of three reasons. A transcoder reports "".
BACKEND_CHECKING, BACKEND_UP = "checking", "up"
BACKEND_DOWN = (BACKEND_UNREACHABLE, BACKEND_KEY_REFUSED, BACKEND_SETUP_REFUSED) = (
    "unreachable", "key_refused", "setup_refused")


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
    instruction: str = ""  # this call's system instruction, instead of SYSTEM_INSTRUCTION (outbound calls)
    greeting: str = ""  # this call's greeting prompt, instead of BRIDGE_GREETING
    hold_greeting: bool = False  # the greeting waits for a Greet (an outbound call: until a human answers)
    age_ms: int = 0  # how long the call has been up (a call under way): the longest call counts from its start


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


@dataclass(slots=True)
class Greet:
    """gw → mc: an outbound call's held greeting (``CallStart.hold_greeting``; the callee's audio is held
    too) may go now: answering-machine detection has a verdict. ``text``: a voicemail message instead."""
    TAG: ClassVar[int] = 19
    call: str
    text: str = ""


@dataclass(slots=True)
class Usage:
    """mc → gw, after each usage report: the call's tokens so far on ``session`` (one model_client's
    meter, model_client/usage.py), keyed ``<direction>_<modality>``; each replaces the one before."""
    TAG: ClassVar[int] = 20
    call: str
    session: str
    tokens: dict  # "input_audio" -> int, ...


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
        if self.kind not in _AUDIO_TAGS:
            raise WireError(f"AudioRun of tag {self.kind}: not an audio message")
        check_columns(self.calls, {"seqs": self.seqs, "t_ins": self.t_ins, "sizes": self.sizes},
                      self.extra, extra_expected=self.kind in _EXTRA, audio=self.audio)


TYPES: dict[int, type] = {cls.TAG: cls for cls in (
    Hello, Heartbeat, CallStart, AudioIn, AudioUp, AudioDown, AudioOut, Interrupt, TurnDone, Played,
    Dtmf, Transcript, Resumption, Action, CallEnd, CallerSpeech, Stats, AudioRun, Greet, Usage)}
assert len(TYPES) == 20, "duplicate tag"

_SCHEMA = Schema(types=TYPES, layouts={tag: layout(cls) for tag, cls in TYPES.items()},
                 run_types=_AUDIO_TYPES, run_type=AudioRun)


def pack(batch: list) -> bytes:
    """One ZeroMQ frame holding every message in ``batch``, consecutive audio messages as runs."""
    return wire_codec.pack(batch, _SCHEMA)


def unpack(frame: bytes, runs: bool = False) -> list:
    """The messages in one frame; AudioRuns are split into their messages unless ``runs``. Raises
    WireError for anything outside the schema."""
    return wire_codec.unpack(frame, _SCHEMA, runs)
