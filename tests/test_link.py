"""Links over real ipc sockets: Hello, batching, liveness, reconnect after a restart (Paranoid Pirate)."""

import asyncio
import time

import pytest
import zmq

from common import messages as m
from common.link import FLUSH_AFTER_S, MAX_HELD, DealerLink, RouterLink, new_epoch

HB = 0.05  # seconds; fast heartbeats keep the test short


def make_router(ctx, endpoint, got, lost, max_held=MAX_HELD):
    epoch = new_epoch()
    return RouterLink(ctx, endpoint, HB, lambda: m.Hello(m.ROLE_GATEWAY, epoch, 0, endpoint),
                      lambda peer, batch: got.append((peer.role, batch)), lost.append, max_held=max_held)


def make_dealer(ctx, endpoint, got, restarts, role=m.ROLE_TRANSCODER):
    epoch = new_epoch()
    return DealerLink(ctx, endpoint, HB, lambda: m.Hello(role, epoch, 10, ""), lambda: 0, got.extend,
                      restarts.append)


async def test_hello_then_batched_messages_both_ways(ctx, tmp_path, until):
    endpoint = f"ipc://{tmp_path}/gw.ipc"
    to_router, to_dealer, lost, restarts = [], [], [], []
    router = make_router(ctx, endpoint, to_router, lost)
    dealer = make_dealer(ctx, endpoint, to_dealer, restarts)
    await router.start()
    await dealer.start()
    try:
        await until(lambda: router.peers and dealer.remote_epoch)
        (peer,) = router.peers.values()
        assert (peer.role, peer.capacity) == (m.ROLE_TRANSCODER, 10)
        for i in range(5):  # queued in one loop pass: one ZeroMQ message
            dealer.send(m.Dtmf("c1", str(i)))
        await until(lambda: to_router)
        assert to_router == [(m.ROLE_TRANSCODER, [m.Dtmf("c1", str(i)) for i in range(5)])]
        router.send(peer.route, m.CallEnd("c1", "bye"))
        await until(lambda: to_dealer)
        assert to_dealer == [m.CallEnd("c1", "bye")]
        assert not lost and not restarts
    finally:
        await dealer.stop()
        await router.stop()


async def test_a_long_loop_pass_does_not_hold_what_is_queued(ctx, tmp_path, until):
    endpoint = f"ipc://{tmp_path}/gw.ipc"
    to_router = []
    router = make_router(ctx, endpoint, to_router, [])
    dealer = make_dealer(ctx, endpoint, [], [])
    await router.start()
    await dealer.start()
    try:
        await until(lambda: router.peers and dealer.remote_epoch)
        dealer.send(m.Dtmf("c1", "1"))
        time.sleep(2 * FLUSH_AFTER_S)  # the loop pass goes on: the next send takes what waited with it
        dealer.send(m.Dtmf("c1", "2"))
        dealer.send(m.Dtmf("c1", "3"))  # goes with the flush at the end of the pass
        await until(lambda: len(to_router) == 2)
        assert [batch for _, batch in to_router] == [[m.Dtmf("c1", "1"), m.Dtmf("c1", "2")],
                                                     [m.Dtmf("c1", "3")]]
    finally:
        await dealer.stop()
        await router.stop()


async def test_what_is_queued_before_the_socket_opens_waits_for_it(ctx, tmp_path, until):
    """The transcoder queues a CallStart on a model link whose start has not run yet; a long pass
    must not flush (and so lose) it before the socket exists."""
    endpoint = f"ipc://{tmp_path}/mc.ipc"
    got = []
    router = make_router(ctx, endpoint, got, [])
    await router.start()
    dealer = make_dealer(ctx, endpoint, [], [])
    starting = asyncio.ensure_future(dealer.start())
    try:
        dealer.send(m.Dtmf("c1", "1"))
        time.sleep(2 * FLUSH_AFTER_S)
        dealer.send(m.Dtmf("c1", "2"))
        await starting
        await until(lambda: got)
        assert got == [(m.ROLE_TRANSCODER, [m.Dtmf("c1", "1"), m.Dtmf("c1", "2")])]
    finally:
        await dealer.stop()
        await router.stop()


async def test_silent_peer_is_lost(ctx, tmp_path, until):
    endpoint = f"ipc://{tmp_path}/gw.ipc"
    lost = []
    router = make_router(ctx, endpoint, [], lost)
    dealer = make_dealer(ctx, endpoint, [], [])
    await router.start()
    await dealer.start()
    try:
        await until(lambda: router.peers)
        await dealer.stop()  # dies without a word
        await until(lambda: lost, timeout=2)
        assert lost[0].role == m.ROLE_TRANSCODER and not router.peers
    finally:
        await router.stop()


async def test_what_waits_for_a_router_not_up_yet_reaches_it(ctx, tmp_path, until):
    """A DEALER that has heard no one since connecting keeps its socket: ZeroMQ retries the connection
    itself, and what waits in it (a CallStart for a call moved to a restarting model_client) is for
    the endpoint's next process. Closing it on silence would leave that call deaf."""
    endpoint = f"ipc://{tmp_path}/gw.ipc"
    got = []
    dealer = make_dealer(ctx, endpoint, [], [])
    await dealer.start()
    router = make_router(ctx, endpoint, got, [])
    try:
        dealer.send(m.Dtmf("c1", "7"))
        await asyncio.sleep(10 * HB)  # well past the liveness window: the far end is still not up
        assert dealer.sock is not None
        await router.start()
        await until(lambda: got)
        assert got == [(m.ROLE_TRANSCODER, [m.Dtmf("c1", "7")])]
    finally:
        await dealer.stop()
        await router.stop()


async def test_dealer_reconnects_and_sees_the_new_epoch(ctx, tmp_path, until):
    endpoint = f"ipc://{tmp_path}/gw.ipc"
    restarts = []
    dealer = make_dealer(ctx, endpoint, [], restarts)
    first = make_router(ctx, endpoint, [], [])
    await first.start()
    await dealer.start()
    try:
        await until(lambda: dealer.remote_epoch)
        old = dealer.remote_epoch
        await first.stop()
        second = make_router(ctx, endpoint, [], [])
        await second.start()
        await until(lambda: dealer.remote_epoch != old and second.peers, timeout=5)
        assert restarts == [old]
        await second.stop()
    finally:
        await dealer.stop()


async def test_a_quickly_replaced_router_learns_the_dealer(ctx, tmp_path, until):
    """ZeroMQ reconnects an ipc DEALER by itself, before liveness would: the new ROUTER's Hello (its
    answer to a heartbeat from a stranger) must make the dealer say Hello again, or it never joins."""
    endpoint = f"ipc://{tmp_path}/gw.ipc"
    epoch = new_epoch()
    dealer = DealerLink(ctx, endpoint, 1.0, lambda: m.Hello(m.ROLE_TRANSCODER, epoch, 10, ""), lambda: 0,
                        lambda batch: None)  # slow heartbeats: no Paranoid Pirate reconnect in this test
    first = RouterLink(ctx, endpoint, 0.05, lambda: m.Hello(m.ROLE_GATEWAY, "one", 0, endpoint),
                       lambda peer, batch: None)
    await first.start()
    await dealer.start()
    try:
        await until(lambda: dealer.remote_epoch == "one")
        await first.stop()
        second = RouterLink(ctx, endpoint, 0.05, lambda: m.Hello(m.ROLE_GATEWAY, "two", 0, endpoint),
                            lambda peer, batch: None)
        await second.start()
        await until(lambda: second.peers, timeout=2.5)
        await second.stop()
    finally:
        await dealer.stop()


async def test_malformed_frame_is_counted_not_fatal(ctx, tmp_path, until):
    endpoint = f"ipc://{tmp_path}/gw.ipc"
    got = []
    router = make_router(ctx, endpoint, got, [])
    dealer = make_dealer(ctx, endpoint, [], [])
    await router.start()
    await dealer.start()
    raw = ctx.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(endpoint)
    try:
        await until(lambda: router.peers)
        await raw.send_multipart([b"\xc1garbage"])
        await raw.send_multipart([b"a", b"b"])
        await until(lambda: router.rejected == 2)
        dealer.send(m.Dtmf("c1", "5"))
        await until(lambda: got)  # the router still serves everyone else
    finally:
        raw.close(linger=0)
        await dealer.stop()
        await router.stop()


@pytest.fixture
async def stranger(ctx, tmp_path, request):
    """(router, what it handed on, a raw DEALER it has never heard say Hello): as a peer that ZeroMQ
    reconnected to a restarted process is, until it hears the new Hello. The router holds
    ``request.param`` messages from a stranger (default MAX_HELD)."""
    endpoint = f"ipc://{tmp_path}/mc.ipc"
    got = []
    router = make_router(ctx, endpoint, got, [], getattr(request, "param", MAX_HELD))
    await router.start()
    raw = ctx.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(endpoint)
    yield router, got, raw
    raw.close(linger=0)
    await router.stop()


async def test_what_a_stranger_sends_waits_for_its_hello(stranger, until):
    """The CallStart of a call moved to a model_client that just restarted may be the first thing its
    transcoder sends there: it must reach the call once the transcoder says Hello, not be dropped."""
    router, got, raw = stranger
    await raw.send_multipart([m.pack([m.Dtmf("c1", "1"), m.Dtmf("c1", "2")])])
    assert isinstance(m.unpack((await raw.recv_multipart())[-1])[0], m.Hello)  # "who are you?"
    await raw.send_multipart([m.pack([m.Hello(m.ROLE_TRANSCODER, "t1", 10, ""), m.Dtmf("c1", "3")])])
    await until(lambda: got)
    assert got == [(m.ROLE_TRANSCODER, [m.Dtmf("c1", "1"), m.Dtmf("c1", "2"), m.Dtmf("c1", "3")])]
    assert router.dropped == 0


@pytest.mark.parametrize("stranger", [800], indirect=True)
async def test_a_router_holds_a_whole_replay_from_a_stranger_when_told_to(stranger, until):
    """A model_client restarted under a call gets the call's replayed caller audio (up to 15 s of
    frames) before the transcoder says Hello again: with 256 held, a replay over 5 s lost its tail."""
    router, got, raw = stranger
    replay = [m.Dtmf("c1", str(i % 10)) for i in range(750)]
    await raw.send_multipart([m.pack(replay)])
    await raw.send_multipart([m.pack([m.Hello(m.ROLE_TRANSCODER, "t1", 10, "")])])
    await until(lambda: sum(len(batch) for _, batch in got) == 750)
    assert [msg for _, batch in got for msg in batch] == replay and router.dropped == 0


async def test_a_stranger_that_never_says_hello_is_forgotten(stranger, until):
    router, got, raw = stranger
    await raw.send_multipart([m.pack([m.Dtmf("c1", str(i % 10)) for i in range(MAX_HELD + 5)])])
    await until(lambda: router.dropped == 1)  # the overflow, counted as soon as it came
    await until(lambda: router.dropped == 2, timeout=2)  # the rest, after LIVENESS heartbeats
    await raw.send_multipart([m.pack([m.Hello(m.ROLE_TRANSCODER, "t1", 10, ""), m.Dtmf("c1", "9")])])
    await until(lambda: got)
    assert got == [(m.ROLE_TRANSCODER, [m.Dtmf("c1", "9")])]
