"""What a softphone call recorded: the audio both ways on one clock, marks, clears and violations."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

RATE = 8000


@dataclass(frozen=True)
class EchoedMark:
    """A mark the softphone sent back, at ``t_s`` on the call clock; ``flushed`` if a clear released it
    (an echo means "finished or flushed")."""
    name: str
    t_s: float
    flushed: bool


@dataclass
class CallResult:
    """One call. The call clock starts where the first media frame's audio starts; ``sent[i]`` and
    ``heard[i]`` are the same instant, so a reply's offset in ``heard`` is its delay on the line."""
    call_sid: str
    stream_sid: str
    twiml: str
    after_connect: list[str]  # verbs after </Connect>, which Twilio runs once the stream ends
    stream_url: str = ""
    custom_parameters: dict[str, str] = field(default_factory=dict)
    sent: bytes = b""  # µ-law the caller sent, trailing silence included
    heard: bytes = b""  # µ-law as played to the caller, silence where nothing played; len == len(sent)
    received: bytes = b""  # every media payload from the server, concatenated (cleared audio too)
    marks_sent_back: list[EchoedMark] = field(default_factory=list)
    clears: list[float] = field(default_factory=list)  # call-clock seconds of each clear
    clears_ns: list[int] = field(default_factory=list)  # time.monotonic_ns() when each clear arrived
    dtmf_sent: list[tuple[float, str]] = field(default_factory=list)
    protocol_errors: list[str] = field(default_factory=list)  # "31950 …" / "31951 …" as Twilio warns
    first_audio_s: float | None = None  # first media frame sent → first audio received
    start_to_audio_s: float | None = None  # `start` sent → first audio received (wall clock)
    speech_end_s: float = 0.0  # call clock when the last frame of the caller's audio was sent
    reply_starts_s: list[float] = field(default_factory=list)  # audio began after ≥250 ms idle / a clear
    turn_latencies_s: list[float] = field(default_factory=list)  # speech end → each reply after it
    closed_by: str = "caller"  # "caller" (sent stop, closed) or "server" (closed the socket)
    underruns: int = 0  # a reply's audio ran out mid-reply, then more came (late audio)
    reply_heard_s: float = 0.0  # the server's audio that played before the call ended (not cleared)
    streams: int = 1  # Media Streams the call used (more after following <Redirect>s)
    stream_gaps_s: list[float] = field(default_factory=list)  # no stream up between two of them

    def summary(self) -> dict:
        """JSON-serialisable: no audio bytes, only their durations."""
        return {
            "call_sid": self.call_sid, "stream_sid": self.stream_sid, "stream_url": self.stream_url,
            "twiml": self.twiml, "custom_parameters": dict(self.custom_parameters),
            "after_connect": list(self.after_connect),
            "sent_s": len(self.sent) / RATE, "heard_s": len(self.heard) / RATE,
            "received_s": len(self.received) / RATE,
            "marks_sent_back": [asdict(mark) for mark in self.marks_sent_back],
            "clears": {"count": len(self.clears), "times_s": list(self.clears)},
            "dtmf_sent": [{"t_s": t, "digit": digit} for t, digit in self.dtmf_sent],
            "protocol_errors": list(self.protocol_errors), "first_audio_s": self.first_audio_s,
            "start_to_audio_s": self.start_to_audio_s,
            "speech_end_s": self.speech_end_s, "reply_starts_s": list(self.reply_starts_s),
            "turn_latencies_s": list(self.turn_latencies_s), "closed_by": self.closed_by,
            "reply_heard_s": self.reply_heard_s,
            "streams": self.streams, "underruns": self.underruns, "stream_gaps_s": list(self.stream_gaps_s),
        }
