"""Call state kept past a stream and a gateway (gateway/call_state.py): the rules as tables, and the
Redis store against a real redis-server."""

from __future__ import annotations

import logging
import time

import pytest
import redis.asyncio as redis

from common.settings import SettingsError, load
from gateway.call_state import (AFTER_S, KEY_PREFIX, MAX_RESUMES, TTL_S, CallRecord, CallState,
                                RedisCallState, next_after)
from harness.stack import free_port


@pytest.mark.parametrize("kept, now, then", [
    (CallRecord(), ("resume", 1), ("resume", 1)),
    (CallRecord(resumes=MAX_RESUMES - 1), ("resume", MAX_RESUMES), ("resume", MAX_RESUMES)),
    (CallRecord(resumes=MAX_RESUMES), ("apologise", MAX_RESUMES + 1), ("resume", MAX_RESUMES + 1)),
    (CallRecord("hangup"), ("hangup", 0), ("resume", 0)),  # a hang-up happens once
    (CallRecord("transfer", "+15550100003", 1), ("transfer", 1), ("resume", 1)),
])
def test_what_twiml_after_does(kept, now, then):
    done, keep = next_after(kept)
    assert (done.disposition, done.resumes) == now and (keep.disposition, keep.resumes) == then
    assert keep.target == ""


def test_a_record_survives_the_trip_through_redis_and_ignores_unknown_fields():
    record = CallRecord("transfer", "sip:desk@example.com", 2, "emu-abc", 7, "host:/t/CA1.jsonl", 12.5,
                        began=1765000000.25)
    raw = {k.encode(): v.encode() for k, v in record.to_redis().items()}
    assert CallRecord.from_redis({**raw, b"added_later": b"x"}) == record


async def test_in_memory_a_stream_that_died_resumes_twice_then_apologises():
    state = CallState()
    state.update("CA1", handle="h1", turn=3)
    kinds = [(await state.after("CA1")).disposition for _ in range(MAX_RESUMES + 1)]
    assert kinds == ["resume"] * MAX_RESUMES + ["apologise"]
    assert state.get("CA1").handle == "h1" and state.get("CA1").turn == 3
    state.update("CA2", disposition="hangup")
    assert (await state.after("CA2")).disposition == "hangup"
    assert state.get("nobody") == CallRecord()


def test_a_record_goes_a_while_after_the_calls_last_stream_here_ended():
    state = CallState()
    for call_sid in ("CA1", "CA2"):
        state.stream_started(call_sid)
        state.update(call_sid, handle=f"h-{call_sid}")
    state.stream_ended("CA1", now=1000.0)
    state.stream_ended("CA3", now=1000.0 + AFTER_S - 1)  # a later end forgets what is due by then
    assert state.get("CA1").handle == "h-CA1"  # Twilio's /twiml/after may still come
    state.stream_started("CA1")  # it did: the call resumed on a fresh stream
    state.stream_ended("CA4", now=1000.0 + AFTER_S + 1)
    assert state.get("CA1").handle == "h-CA1"
    state.stream_ended("CA1", now=2000.0)
    state.stream_ended("CA5", now=2000.0 + AFTER_S)
    assert state.get("CA1") == CallRecord() and state.get("CA2").handle == "h-CA2" and len(state) == 1


async def test_twiml_after_for_a_stream_that_was_elsewhere_is_forgotten_too():
    state = CallState()
    state.update("CA1", disposition="hangup")  # as if loaded from Redis: no stream of it here
    assert (await state.after("CA1")).disposition == "hangup"
    state.stream_ended("CA2", now=time.time() + AFTER_S + 1)
    assert len(state) == 0


async def test_two_gateways_share_a_call_through_redis(redis_server, until):
    one, two = RedisCallState(redis_server.url), RedisCallState(redis_server.url)
    await one.start()
    await two.start()
    try:
        one.update("CA10", handle="emu-h", turn=4, transcript="gw1:/t/CA10.jsonl")
        one.update("CA10", disposition="transfer", target="+15550100003")
        await until(lambda: not one._dirty)
        done = await two.after("CA10")  # the other instance gets Twilio's <Redirect>
        assert (done.disposition, done.target, done.handle, done.turn) == ("transfer", "+15550100003", "emu-h", 4)
        assert two.get("CA10").handle == "emu-h"  # now local to it: the stream start reads it there
        await until(lambda: not two._dirty)
        assert (await one.load("CA10")).disposition == "resume"  # the transfer happened once
        client = redis.from_url(redis_server.url)
        assert 0 < await client.ttl(KEY_PREFIX + "CA10") <= TTL_S
        await client.aclose()
    finally:
        await one.stop()
        await two.stop()


async def test_redis_down_never_fails_a_call_and_is_logged_without_its_password(caplog, until):
    caplog.set_level(logging.ERROR)
    state = RedisCallState(f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0")
    await state.start()
    try:
        state.update("CA20", handle="emu-h", turn=2)
        assert (await state.after("CA20")).disposition == "resume"
        assert state.get("CA20").handle == "emu-h"  # memory still serves the call
        await until(lambda: state.errors >= 2)
    finally:
        await state.stop()
    assert "cannot reach Redis at 127.0.0.1" in caplog.text and "hunter2" not in caplog.text


def test_redis_url_is_checked_and_its_password_is_a_secret(tmp_path):
    env = {"BRIDGE_RUN_DIR": str(tmp_path)}
    assert load({**env, "REDIS_URL": "redis://:pw-123456@redis:6379/0"}).secrets[-1] == "pw-123456"
    assert load(env).redis_url == ""
    with pytest.raises(SettingsError, match="REDIS_URL"):
        load({**env, "REDIS_URL": "http://redis:6379"})
