"""Call state that must outlive a stream, and with ``REDIS_URL`` a gateway: keyed by CallSid.

Per call: its disposition (what ``/twiml/after`` answers once the stream ends, and how many times the
call has been resumed), its latest resumable Gemini handle with the newest turn id, and where its
transcript is written. When a stream dies under a live caller, Twilio runs the ``<Redirect>`` to
``/twiml/after``; whichever gateway gets it (the same one after a model failure, another instance
behind the load balancer after a gateway died) reads this and starts a fresh stream whose Gemini
session resumes from the handle. (Twilio runs that ``<Redirect>`` only when the stream ended and the
call did not: a caller hanging up ends everything. So never a dead line: a hang-up or transfer the model
asked for, else a bounded number of fresh streams, then an apology.)

``CallState`` keeps everything in memory: a call's record from its first change until ``AFTER_S``
after its last stream here ended (so memory holds the live calls and the last few minutes' ended
ones, not every call since the gateway started). ``RedisCallState`` keeps the memory copy too (every
read a stream start needs is then local and synchronous) and writes through to Redis, one hash per call
(``bridge:call:<CallSid>``) expiring ``TTL_S`` after its last change. Redis trouble never fails a call:
a write is retried with the next one, a read falls back to memory; both are logged and counted.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass, fields, replace
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

TTL_S = 4 * 3600  # longer than any call
# After a stream ends, Twilio asks /twiml/after at once and a resumed stream starts within seconds;
# a record with no stream for this long is done with here (Redis keeps its copy for TTL_S).
AFTER_S = 300.0
MAX_RESUMES = 2  # fresh streams after failures before the call apologises and hangs up
KEY_PREFIX = "bridge:call:"
REDIS_TIMEOUT_S = 1.0
MAX_CALLS = 100_000  # memory copy bound: the oldest go (still in Redis when configured)


@dataclass(frozen=True, slots=True)
class CallRecord:
    disposition: str = "resume"  # "resume" | "hangup" | "transfer" | "apologise" | "stalled" (resume, sorry first)
    target: str = ""  # the transfer's number
    resumes: int = 0  # fresh streams so far
    handle: str = ""  # the latest resumable Gemini session handle
    turn: int = 0  # the newest turn id the call has seen: a resumed session numbers after it
    transcript: str = ""  # "host:path" of the transcript file the call began writing
    touched: float = 0.0
    began: float = 0.0  # wall clock: when the call's first stream started (the longest call counts from it)

    def to_redis(self) -> dict[str, str]:
        return {f.name: str(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_redis(cls, raw: dict) -> "CallRecord":
        text = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                for k, v in raw.items()}
        kinds = {f.name: f.type for f in fields(cls)}
        values = {}
        for name, value in text.items():
            if name in kinds:  # a field a newer version added is ignored, not fatal
                values[name] = {"int": int, "float": float}.get(kinds[name], str)(value)
        return cls(**values)


def next_after(record: CallRecord) -> tuple[CallRecord, CallRecord]:
    """What ``/twiml/after`` does now, and the record to keep: a hang-up or transfer the model asked
    for happens once; otherwise the call resumes (``MAX_RESUMES`` times; after a stall with a word of
    apology first), then apologises."""
    if record.disposition in ("hangup", "transfer"):
        return record, replace(record, disposition="resume", target="")
    resumes = record.resumes + 1
    again = "stalled" if record.disposition == "stalled" else "resume"  # a stalled model: say sorry first
    now = replace(record, disposition=again if resumes <= MAX_RESUMES else "apologise", resumes=resumes)
    return now, replace(record, disposition="resume", resumes=resumes)


def transcript_pointer(path: str) -> str:
    return f"{socket.gethostname()}:{path}" if path else ""


class CallState:
    """In memory only: state lasts as long as this gateway."""

    def __init__(self):
        self._calls: dict[str, CallRecord] = {}
        self._ended: dict[str, float] = {}  # CallSid -> when its last stream ended, oldest first
        self.errors = 0  # Redis operations that failed

    def get(self, call_sid: str) -> CallRecord:
        record = self._calls.get(call_sid)
        if record is None or record.touched + TTL_S < time.time():
            return CallRecord()
        return record

    def update(self, call_sid: str, **changes) -> CallRecord:
        record = replace(self.get(call_sid), **changes, touched=time.time())
        self._calls.pop(call_sid, None)
        self._calls[call_sid] = record  # newest last: the bound drops the oldest
        while len(self._calls) > MAX_CALLS:
            del self._calls[next(iter(self._calls))]
        self._changed(call_sid, record)
        return record

    def stream_started(self, call_sid: str) -> None:
        self._ended.pop(call_sid, None)

    def stream_ended(self, call_sid: str, now: float | None = None) -> None:
        """The call has no stream here now: its record goes ``AFTER_S`` later unless one starts."""
        now = time.time() if now is None else now
        self._ended.pop(call_sid, None)
        self._ended[call_sid] = now
        while self._ended:
            oldest, ended = next(iter(self._ended.items()))
            if ended > now - AFTER_S:
                break
            del self._ended[oldest]
            self._calls.pop(oldest, None)

    async def after(self, call_sid: str) -> CallRecord:
        """The disposition for a stream that ended (see ``next_after``)."""
        now, keep = next_after(await self.load(call_sid))
        self.update(call_sid, **{f.name: getattr(keep, f.name) for f in fields(keep) if f.name != "touched"})
        if call_sid not in self._ended:  # its stream was on another gateway
            self.stream_ended(call_sid)
        return now

    async def load(self, call_sid: str) -> CallRecord:
        return self.get(call_sid)

    def _changed(self, call_sid: str, record: CallRecord) -> None:
        pass

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def __len__(self) -> int:
        return len(self._calls)


class RedisCallState(CallState):
    """The memory copy, written through to Redis by one writer task (changes coalesce per call)."""

    def __init__(self, url: str):
        super().__init__()
        import redis.asyncio as redis  # only needed with REDIS_URL
        self._redis = redis.from_url(url, socket_timeout=REDIS_TIMEOUT_S,
                                     socket_connect_timeout=REDIS_TIMEOUT_S)
        parts = urlsplit(url)
        self.where = f"{parts.hostname}:{parts.port or 6379}{parts.path}"  # never the password
        self._dirty: dict[str, CallRecord] = {}
        self._wake = asyncio.Event()
        self._writer: asyncio.Task | None = None

    async def start(self) -> None:
        try:
            await self._redis.ping()
            log.info("call state kept in Redis at %s", self.where)
        except Exception as e:  # the gateway still works; the writer keeps trying
            self._failed("reach", e)
        self._writer = asyncio.create_task(self._write_loop(), name="call-state-writer")

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        if self._dirty:
            await self._flush()  # one last try: a draining gateway's calls may resume elsewhere
        await self._redis.aclose()

    async def load(self, call_sid: str) -> CallRecord:
        """Redis first (another gateway may have written it), memory if Redis fails."""
        if call_sid in self._dirty:
            return self.get(call_sid)  # ours is newer than what Redis has
        try:
            raw = await self._redis.hgetall(KEY_PREFIX + call_sid)
        except Exception as e:
            self._failed("read", e)
            return self.get(call_sid)
        if not raw:
            return self.get(call_sid)
        try:
            record = CallRecord.from_redis(raw)
        except (TypeError, ValueError) as e:
            self._failed("parse", e)
            return self.get(call_sid)
        self._calls[call_sid] = record
        return record

    def _changed(self, call_sid: str, record: CallRecord) -> None:
        self._dirty[call_sid] = record
        self._wake.set()

    async def _write_loop(self) -> None:
        backoff = 0.1
        while True:
            await self._wake.wait()
            self._wake.clear()
            if await self._flush():
                backoff = 0.1
            else:
                await asyncio.sleep(backoff)  # kept dirty: retried, with newer changes folded in
                backoff = min(backoff * 2, 5.0)
                self._wake.set()

    async def _flush(self) -> bool:
        batch, self._dirty = self._dirty, {}
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for call_sid, record in batch.items():
                    pipe.hset(KEY_PREFIX + call_sid, mapping=record.to_redis())
                    pipe.expire(KEY_PREFIX + call_sid, TTL_S)
                await pipe.execute()
            return True
        except Exception as e:
            self._failed("write", e)
            self._dirty = {**batch, **self._dirty}
            return False

    def _failed(self, what: str, e: Exception) -> None:
        self.errors += 1
        log.error("call state: cannot %s Redis at %s: %s: %s", what, self.where, type(e).__name__, e)


def make_call_state(redis_url: str) -> CallState:
    return RedisCallState(redis_url) if redis_url else CallState()
