"""The wire schema: every type round-trips; anything outside the schema is a WireError."""

import msgpack
import pytest

from common import messages as m

EXAMPLES = [
    m.Hello(m.ROLE_TRANSCODER, "e1", 100, ""),
    m.Hello(m.ROLE_MODEL_CLIENT, "e2", 80, "ipc:///tmp/x/model_client-0.ipc", m.PROTOCOL_VERSION),
    m.Heartbeat("e1", 3),
    m.CallStart("c1", "CA1", "MZ1", {"FirstName": "Jane"}, "ipc:///tmp/mc.ipc"),
    m.CallStart("c1", "CA1", "MZ1", {}, "tcp://10.0.0.2:7000", "handle-1", True),
    m.CallStart("c1", "CA1", "", {"order": "A17"}, "ipc:///tmp/mc.ipc", instruction="Remind them.",
                greeting="Say hello.", hold_greeting=True),
    m.Greet("c1"),
    m.Greet("c1", "Leave a message."),
    m.AudioIn("c1", 1, 123456789, b"\xff" * 160, 20),
    m.AudioUp("c1", 1, 123456789, b"\x00\x01" * 320),
    m.AudioDown("c1", 7, 5, b"\x01\x00" * 480, 2),
    m.AudioOut("c1", 7, 5, b"\x7f" * 160, 2),
    m.Interrupt("c1", 2),
    m.TurnDone("c1", 2),
    m.Played("c1", 2, "2.1"),
    m.Played("c1", 2, "2.2", True),
    m.Dtmf("c1", "#"),
    m.Transcript("c1", "caller", "hello", True),
    m.Resumption("c1", "handle-2"),
    m.Action("c1", "transfer", "+15550001111"),
    m.CallEnd("c1", "caller hung up"),
    m.CallerSpeech("c1", "vad"),
    m.Played("c1", 3, "3.4", False, 600),
    m.Stats({"frames_up": 12}, {"calls": 2}, {"up_hop_ms": [1, 0, 3, 4500]}),
    m.Usage("c1", "a1b2c3d4", {"input_audio": 120, "output_audio": 80}),
]


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda msg: type(msg).__name__)
def test_round_trip(msg):
    assert m.unpack(m.pack([msg])) == [msg]


def test_batch_keeps_order():
    assert m.unpack(m.pack(EXAMPLES)) == EXAMPLES


def test_every_type_has_an_example():
    assert {type(msg) for msg in EXAMPLES} | {m.AudioRun} == set(m.TYPES.values())


def _in(call, seq=1, audio=b"\xff" * 160):
    return m.AudioIn(call, seq, 1000 + seq, audio, 20 * seq)


def _shape(batch):
    return [f"run{len(msg.calls)}" if isinstance(msg, m.AudioRun) else type(msg).__name__ for msg in batch]


@pytest.mark.parametrize("batch, shape", [
    ([_in("a")], ["AudioIn"]),
    ([_in("a"), _in("b"), _in("c")], ["run3"]),
    ([_in("a"), _in("a", 2)], ["AudioIn", "AudioIn"]),  # a call met again: its frames stay in order
    ([_in("a"), _in("b"), _in("a", 2), _in("c", 1)], ["run2", "run2"]),
    ([_in("a"), m.Dtmf("a", "1"), _in("b"), _in("c")], ["AudioIn", "Dtmf", "run2"]),
    ([_in("a"), m.AudioUp("b", 1, 2, b"\0\0"), m.AudioUp("c", 1, 2, b"")], ["AudioIn", "run2"]),
    ([m.AudioOut("a", 1, 2, b"\x7f", 3), m.AudioOut("b", 4, 5, b"\x7f" * 3, 6)], ["run2"]),
    ([m.AudioDown("a", 1, 2, b"", 3), m.AudioDown("b", 4, 5, b"\x01\x00", 6), m.TurnDone("b", 6)],
     ["run2", "TurnDone"]),
], ids=lambda v: None if isinstance(v[0], str) else "-".join(_shape(v)))
def test_audio_travels_in_runs_and_unpacks_as_sent(batch, shape):
    assert _shape(m.unpack(m.pack(batch), runs=True)) == shape
    assert m.unpack(m.pack(batch)) == batch


def test_a_run_holds_its_messages_as_columns():
    run = m.AudioRun.of([_in("a", 1, b"\x01\x02"), _in("b", 5, b""), _in("c", 2, b"\x03")])
    assert run == m.AudioRun(m.AudioIn.TAG, ["a", "b", "c"], [1, 5, 2], [1001, 1005, 1002], [2, 0, 1],
                             b"\x01\x02\x03", [20, 100, 40])
    assert run.chunks() == [b"\x01\x02", b"", b"\x03"]


def _frame(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


@pytest.mark.parametrize("frame, reason", [
    (b"\xc1", "not msgpack"),
    (b"", "not msgpack"),
    (_frame({"a": 1}), "must be an array"),
    (_frame([5]), "must be [tag"),
    (_frame([[]]), "must be [tag"),
    (_frame([["AudioIn", "c"]]), "must be [tag"),
    (_frame([[99, "c"]]), "unknown message tag 99"),
    (_frame([[m.Interrupt.TAG, "c"]]), "takes 2..2 fields, got 1"),
    (_frame([[m.Interrupt.TAG, "c", 1, 2]]), "takes 2..2 fields, got 3"),
    (_frame([[m.Interrupt.TAG, "c", "1"]]), "is not int"),
    (_frame([[m.AudioIn.TAG, "c", 1, 2, "not bytes"]]), "is not bytes"),
    (_frame([[m.Hello.TAG, "transcoder", "e", 1.5, ""]]), "is not int"),
    (_frame([[m.CallStart.TAG, "c", "CA", "MZ", [], "ipc://x"]]), "is not dict"),
    (_frame([[m.AudioRun.TAG, m.Dtmf.TAG, ["c"], [1], [2], [1], b"1", []]]), "not an audio message"),
    (_frame([[m.AudioRun.TAG, m.AudioUp.TAG, [], [], [], [], b"", []]]), "unequal lengths"),
    (_frame([[m.AudioRun.TAG, m.AudioUp.TAG, ["c"], [1, 2], [2], [0], b"", []]]), "unequal lengths"),
    (_frame([[m.AudioRun.TAG, m.AudioIn.TAG, ["c"], [1], [2], [0], b"", []]]), "unequal lengths"),
    (_frame([[m.AudioRun.TAG, m.AudioUp.TAG, [1], [1], [2], [0], b"", []]]), "calls must all be str"),
    (_frame([[m.AudioRun.TAG, m.AudioUp.TAG, ["c"], [True], [2], [0], b"", []]]), "seqs must all be int"),
    (_frame([[m.AudioRun.TAG, m.AudioOut.TAG, ["c"], [1], [2], [0], b"", ["7"]]]), "extra must all be int"),
    (_frame([[m.AudioRun.TAG, m.AudioUp.TAG, ["c", "c"], [1, 2], [2, 3], [0, 0], b"", []]]),
     "holds a call twice"),
    (_frame([[m.AudioRun.TAG, m.AudioUp.TAG, ["c", "d"], [1, 2], [2, 3], [2, 1], b"12", []]]),
     "sizes do not cut"),
    (_frame([[m.AudioRun.TAG, m.AudioUp.TAG, ["c", "d"], [1, 2], [2, 3], [3, -1], b"12", []]]),
     "sizes do not cut"),
    (_frame([[m.AudioRun.TAG, m.AudioUp.TAG, ["c"], [1], [2], [0], b""]]), "takes 7..7 fields"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_malformed_frames_are_rejected(frame, reason):
    with pytest.raises(m.WireError, match=reason.replace("[", r"\[").replace(".", r"\.")):
        m.unpack(frame)
