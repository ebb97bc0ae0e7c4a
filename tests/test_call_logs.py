"""Every log line about a call names it: the call id, the CallSid, and the StreamSid once Twilio's
``start`` has given it, in every process of the real stack, as text and as JSON (common/logs.py)."""

import json
import re
import time
import urllib.parse
import urllib.request
from typing import NamedTuple

import pytest

from common import logs
from softphone.caller import place_call
from softphone.speech import speech_like
from harness.stack import Stack

TEXT = re.compile(r"\S+ \S+ (?P<level>[A-Z]+) (?P<process>\S+) call=(?P<call>\S+) call_sid=(?P<call_sid>\S+) "
                  r"stream_sid=(?P<stream_sid>\S+) (?P<logger>\S+): (?P<message>.*)")


class Line(NamedTuple):
    process: str
    call: str
    call_sid: str
    stream_sid: str
    logger: str
    message: str


def parse(log: str, fmt: str) -> list[Line]:
    """The bridge's own lines (supervisord's are left out), in the order each process wrote them."""
    lines = []
    for raw in log.splitlines():
        if fmt == "json" and raw.startswith("{"):
            d = json.loads(raw)
            lines.append(Line(*(d[field] for field in Line._fields)))
        elif fmt == "text" and (match := TEXT.fullmatch(raw)):
            lines.append(Line(*match.group(*Line._fields)))
    return lines


def after(stack: Stack, call: str, call_sid: str) -> str:
    data = urllib.parse.urlencode({"CallSid": call_sid}).encode()
    with urllib.request.urlopen(f"{stack.url}/twiml/after?call={call}", data=data, timeout=5) as r:
        return r.read().decode()


@pytest.mark.e2e
@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_every_line_about_a_call_names_its_ids(fmt, tmp_path):
    stack = Stack(tmp_path / "run", GEMINI_SILENCE_MS="300", LOG_FORMAT=fmt, LOG_LEVEL="INFO",
                  EMULATOR_TOOL_SCRIPT=json.dumps([{"when": "pressed 9", "call": "end_call"}])).start()
    try:
        # Speech, its echo, then 9: the model hangs up, the gateway closes the stream, and the softphone
        # follows the <Redirect> to /twiml/after as Twilio would.
        result = await place_call(stack.url, speech_like(1.0, seed=3), listen_s=8.0, dtmf=[(3.0, "9")],
                                  follow_redirect=True, timeout_s=30)
        assert result.closed_by == "server" and result.reply_heard_s > 0.5
        first = parse(stack.log.read_text(), fmt)
        call = next(re.fullmatch(r"call (\S+) \(\S+\) admitted", line.message)[1] for line in first
                    if line.message.endswith(f"({result.call_sid}) admitted"))
        # A stream that died under a live caller: Twilio asks /twiml/after, which starts a fresh stream.
        assert "<Connect>" in after(stack, call, result.call_sid)
    finally:
        assert stack.stop() == 0
    lines = parse(stack.log.read_text(), fmt)
    calls = {re.fullmatch(r"call (\S+) \(\S+\) admitted", line.message)[1] for line in lines
             if line.message.endswith(f"({result.call_sid}) admitted")}
    assert call in calls and len(calls) == 2  # the first stream's, and the fresh one's

    about = [line for line in lines if result.call_sid in line.message or line.call in calls
             or any(c in line.message for c in calls)]
    wrong = [line for line in about if line.call_sid != result.call_sid or line.call not in calls
             or any(c in line.message and line.call != c for c in calls)]
    assert not wrong, "\n".join(map(str, wrong))

    ours = [line for line in about if line.call == call]
    assert {line.process.split("-")[0] for line in ours} == {"gateway", "transcoder", "model_client"}
    # /twiml/after comes once the stream is over: its lines name the call id and CallSid only.
    during = [line for line in ours if "/twiml/after" not in line.message
              and not line.message.startswith("stream of ")]
    for process in {line.process for line in during}:
        sids = [line.stream_sid for line in during if line.process == process]
        assert result.stream_sid in sids, f"{process} never names the StreamSid"
        # Known from the stream's start on, and never another.
        assert set(sids[sids.index(result.stream_sid):]) == {result.stream_sid}, (process, sids)
        assert set(sids) <= {"-", result.stream_sid}

    said = [line.message for line in ours]
    for expected in (rf"call {call} \({result.call_sid}\) admitted", r"model turn 1 \(complete.*",
                     rf"stream of {result.call_sid} ended: hangup",
                     rf"stream of {result.call_sid} ended: resume",
                     rf".*\"POST /twiml/after\?call={call} HTTP/1.1\" 200 .*",
                     r".*\"GET /ws/twilio HTTP/1.1\" 101 .*"):
        assert any(re.fullmatch(expected, message) for message in said), expected


def test_ids_from_outside_cannot_forge_a_line():
    with logs.call_context("c1", "CA1\ncall=forged", "MZ" + "0" * 80):
        assert logs.call_ids() == logs.CallIds("c1", "?", "?")
    logs.register_call("c2", "CA2")
    try:
        with logs.call_context("c2"):
            assert logs.call_ids() == logs.CallIds("c2", "CA2", "-")
            logs.register_call("c2", "", "MZ2")  # the StreamSid once known; the CallSid stays
            assert logs.call_ids() == logs.CallIds("c2", "CA2", "MZ2")
    finally:
        logs.forget_call("c2")
    with logs.call_context("c2"):
        assert logs.call_ids() == logs.CallIds("c2", "-", "-")


def test_a_call_whose_stream_never_came_is_forgotten_in_time():
    logs.register_call("c4", "CA4")  # admitted at the webhook; no stream followed
    logs.register_call("c5", "CA5", "MZ5")  # a stream is up: forgotten only at its end
    try:
        logs._drop_stale(time.monotonic() + logs.PENDING_S + 1)
        with logs.call_context("c4"):
            assert logs.call_ids() == logs.CallIds("c4", "-", "-")
        with logs.call_context("c5"):
            assert logs.call_ids() == logs.CallIds("c5", "CA5", "MZ5")
    finally:
        logs.forget_call("c5")
