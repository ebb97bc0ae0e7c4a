"""The pieces that keep calls alive through faults, one at a time: the ROUTER's socket monitor, the
gateway's ring of caller audio, and the model_client's journal, retry budget and close-code policy.
(tests/test_chaos.py puts them together under supervisord.)"""

import asyncio
import gc
import subprocess
import sys
import time

import pytest

from common import messages as m
from common.link import RouterLink, new_epoch
from gateway.replay import CallerRing
from harness.stack import ROOT
from model_client.reconnect import Conversation, Ended, Journal, RetryBudget, next_step, time_left_s

HB = 1.0  # slow heartbeats: only the monitor can notice a death within the test's deadline

PEER = """
import sys, zmq
from common import messages as m
ctx = zmq.Context()
sock = ctx.socket(zmq.DEALER)
sock.setsockopt(zmq.IDENTITY, b"transcoder-x")
sock.connect(sys.argv[1])
sock.send(m.pack([m.Hello(m.ROLE_TRANSCODER, "e1", 10, "")]))
sys.stdin.read()  # until killed
"""


@pytest.mark.parametrize("monitor", [True, False])
async def test_monitor_reports_a_killed_peer_at_once(ctx, tmp_path, monitor, until):
    endpoint = f"ipc://{tmp_path}/gw.ipc"
    lost = []
    epoch = new_epoch()
    router = RouterLink(ctx, endpoint, HB, lambda: m.Hello(m.ROLE_GATEWAY, epoch, 0, endpoint),
                        lambda peer, batch: None, lost.append, monitor=monitor)
    await router.start()
    peer = subprocess.Popen([sys.executable, "-c", PEER, endpoint], stdin=subprocess.PIPE, cwd=ROOT)
    try:
        await until(lambda: router.peers)
        peer.kill()
        killed = time.monotonic()
        if monitor:
            await until(lambda: lost, timeout=0.5)
            assert time.monotonic() - killed < 0.2 and router.disconnects == 1
            assert [p.route for p in lost] == [b"transcoder-x"] and not router.peers
        else:
            await asyncio.sleep(0.5)
            assert not lost, "without the monitor only silence tells (3 heartbeats)"
    finally:
        peer.kill()
        peer.wait()
        peer.stdin.close()
        await router.stop()


def frame(t_in: int) -> m.AudioIn:
    return m.AudioIn("c1", t_in, t_in, b"\xff" * 160)


def test_ring_keeps_what_no_handle_covers_and_is_bounded():
    ring = CallerRing(max_s=0.1)  # 5 frames
    for t in range(1, 8):
        ring.add(frame(t))
    assert [f.t_in for f in ring.frames()] == [3, 4, 5, 6, 7] and ring.shed == 2
    assert [f.t_in for f in ring.frames(since_ns=6)] == [6, 7]
    ring.covered(5)
    assert [f.t_in for f in ring.frames()] == [6, 7]
    ring.covered(99)
    assert not ring.frames()


def test_ring_gives_back_what_it_was_given_and_leaves_the_collector_nothing_to_walk():
    sent = [m.AudioIn("c1", seq, 1000 + seq, bytes([seq]) * 160, 20 * seq) for seq in range(1, 4)]
    ring = CallerRing(max_s=1.0)
    for msg in sent:
        ring.add(msg)
    gc.collect()  # a full pass untracks tuples of ints and bytes: 15 s of 300 calls is not walked again
    assert not any(gc.is_tracked(kept) for kept in ring._frames)
    assert ring.frames() == sent


def test_journal_resends_what_a_handle_lacks():
    journal = Journal(max_bytes=1000)
    journal.sent("audio", b"a" * 10)
    assert journal.since("") == [("audio", b"a" * 10)]  # no handle yet: all of it
    journal.mark("h1")
    journal.sent("text", "pressed 5")
    journal.sent("audio", b"b" * 10)
    assert journal.since("h1") == [("text", "pressed 5"), ("audio", b"b" * 10)]
    journal.mark("h2", keep=("h1",))  # a standby opened with h1 may still need it
    journal.sent("audio", b"c" * 10)
    assert journal.since("h1")[-1] == ("audio", b"c" * 10) and len(journal.since("h1")) == 3
    assert journal.since("h2") == [("audio", b"c" * 10)]
    journal.mark("h3")  # h1 and h2 are forgotten, and so is what only they lacked
    assert journal.since("h3") == [] and journal.since("unknown") == []


def test_journal_is_bounded():
    journal = Journal(max_bytes=25)
    for byte in b"abc":
        journal.sent("audio", bytes([byte]) * 10)
    assert journal.since("") == [("audio", b"b" * 10), ("audio", b"c" * 10)] and journal.shed == 10


def test_retry_budget_backs_off_and_resets_after_a_stable_connection():
    budget = RetryBudget(max_attempts=3, stable_s=10)
    assert [budget.next_delay(0), budget.next_delay(0), budget.next_delay(0)] == [0.0, 0.25, 0.5]
    assert budget.next_delay(0) is None
    budget.connected(100.0)
    assert budget.next_delay(111.0) == 0.0  # up 11 s: the count starts again
    budget.connected(200.0)
    assert budget.next_delay(201.0) == 0.25  # up 1 s: it does not


@pytest.mark.parametrize("code, resuming, step", [
    (1000, False, "resume"), (1001, True, "resume"), (1006, False, "resume"), (1011, True, "resume"),
    (None, False, "resume"), (1007, True, "fresh"), (1007, False, "fatal"), (1008, True, "fatal"),
])
def test_close_codes(code, resuming, step):
    assert next_step(Ended(code, "x"), resuming) == step


def test_go_away_time_left():
    assert [time_left_s(t) for t in ("5s", "0.3s", "50s")] == [5.0, 0.3, 50.0]
    assert time_left_s(None) == time_left_s("soon") == 10.0


def test_conversation_for_a_fresh_session_is_bounded_and_joins_pieces():
    said = Conversation(max_chars=38)
    for role, text in [("caller", "hello"), ("model", "Hi"), ("model", " there"), ("caller", "x" * 30),
                       ("model", "ok")]:
        said.add(role, text)
    text = said.instruction("Be nice.")
    assert text.startswith("Be nice.") and "You: Hi there" not in text  # the oldest went first
    assert "Caller: " + "x" * 30 + "\nYou: ok" in text
