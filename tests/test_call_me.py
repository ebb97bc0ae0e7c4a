"""The browser phone's "Call me" without a browser: when the gateway offers it (a table), what the page
may send, and bad requests to the new endpoints (the gateway's /phone/call-me and the Twilio stand-in's
browser line), each refused with a clear 4xx, a log line and a count. The call itself, answered and
declined in headless Chromium through the real stack: tests/test_browser.py."""

from __future__ import annotations

import asyncio
import base64
import json
import logging

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from common.settings import load
from gateway import phone_dial
from gateway.app import COUNTERS, make_app
from gateway.outbound_rules import DialError
from harness.stack import free_port
from softphone.browser_line import loopback_origin, ring_timeout
from softphone.twilio_rest import TwilioRest
from softphone.webhook import upgrade_headers

ACCOUNT = "AC" + "0" * 32
AUTH = "test-auth-token"
OUTBOUND = {"TWILIO_ACCOUNT_SID": ACCOUNT, "TWILIO_AUTH_TOKEN": AUTH, "BRIDGE_API_TOKEN": "test-api-token",
            "BRIDGE_DIAL_ALLOW": "+1555*", "BRIDGE_DIAL_FROM": "+15550100001",
            "TWILIO_API_URL": "http://127.0.0.1:8090"}


@pytest.mark.parametrize("env, why", [
    (OUTBOUND, ""),
    ({**OUTBOUND, "TWILIO_API_URL": "http://localhost:9000"}, ""),
    ({**OUTBOUND, "BRIDGE_API_TOKEN": ""}, "BRIDGE_API_TOKEN is not set"),
    ({**OUTBOUND, "TWILIO_AUTH_TOKEN": ""}, "need TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN"),
    ({**OUTBOUND, "TWILIO_API_URL": "https://api.twilio.com"}, "would ring a real phone"),
    ({**OUTBOUND, "TWILIO_API_URL": "http://203.0.113.9:8090"}, "would ring a real phone"),
    ({**OUTBOUND, "TWILIO_API_URL": "https://127.0.0.1:8090"}, "would ring a real phone"),
    ({**OUTBOUND, "BRIDGE_DIAL_ALLOW": "+44*"}, "+15550100002 is not on BRIDGE_DIAL_ALLOW"),
])
def test_call_me_is_offered_only_with_the_local_stand_in(env, why):
    found = phone_dial.why_not(load(env))
    assert (why in found and bool(found) == bool(why)), found


@pytest.mark.parametrize("raw, body", [
    (b"", {"greeting": "G", "to": phone_dial.PHONE_NUMBER}),
    (b"{}", {"greeting": "G", "to": phone_dial.PHONE_NUMBER}),
    (b'{"greeting": "Mine"}', {"greeting": "Mine", "to": phone_dial.PHONE_NUMBER}),
    (b'{"voicemail": {"policy": "hangup"}}', {"greeting": "G", "voicemail": {"policy": "hangup"},
                                              "to": phone_dial.PHONE_NUMBER}),
])
def test_the_page_request_becomes_a_calls_request_to_the_browser_phone(raw, body):
    assert json.loads(phone_dial.dial_body(raw, "G")) == body


@pytest.mark.parametrize("raw, why", [
    (b"{nope", "not JSON"),
    (b"[]", "JSON object"),
    (b'{"to": "+15550001111"}', "number is fixed"),
    (b'{"from": "+15550001111"}', "number is fixed"),
])
def test_a_malformed_page_request_is_refused(raw, why):
    with pytest.raises(DialError, match=why) as refused:
        phone_dial.dial_body(raw, "G")
    assert refused.value.status == 400


@pytest.mark.parametrize("origin, ok", [
    (None, True), ("http://127.0.0.1:8080", True), ("http://localhost:8080", True), ("http://[::1]:8080", True),
    ("https://evil.example", False), ("http://127.0.0.1.evil.example", False), ("null", False),
])
def test_the_line_serves_pages_of_this_host_only(origin, ok):
    assert loopback_origin(origin) is ok


@pytest.mark.parametrize("form, seconds", [
    ({}, 60), ({"Timeout": "30"}, 30), ({"Timeout": "1"}, 5), ({"Timeout": "99999"}, 600), ({"Timeout": "x"}, 60),
])
def test_the_line_rings_for_the_requests_timeout(form, seconds):
    assert ring_timeout(form) == seconds


# --- bad requests to the gateway's /phone/call-me -------------------------------------------------------

def app(tmp_path, **env):
    return make_app(load({"BRIDGE_RUN_DIR": str(tmp_path), **env}))


@pytest.mark.parametrize("env, body, headers, status, why", [
    ({}, b"{}", {"Content-Type": "application/json"}, 409, "BRIDGE_API_TOKEN is not set"),
    (OUTBOUND, b"{}", {"Content-Type": "text/plain"}, 415, "application/json"),
    (OUTBOUND, b"{}", {"Content-Type": "application/json", "X-Forwarded-For": "203.0.113.9"}, 403,
     "this host"),
    (OUTBOUND, b"{nope", {"Content-Type": "application/json"}, 400, "not JSON"),
    (OUTBOUND, b'{"to": "+15550001111"}', {"Content-Type": "application/json"}, 400, "number is fixed"),
    (OUTBOUND, b'{"persona": "x"}', {"Content-Type": "application/json"}, 400, "unknown field"),
    (OUTBOUND, b'{"greeting": "' + b"x" * 17000 + b'"}', {"Content-Type": "application/json"}, 413, "larger"),
])
async def test_bad_call_me_requests_are_refused_and_dial_nothing(tmp_path, caplog, env, body, headers, status,
                                                                 why):
    async with TestClient(TestServer(app(tmp_path, **env))) as client:
        with caplog.at_level(logging.WARNING, logger="gateway.phone_dial"):
            response = await client.post("/phone/call-me", data=body, headers=headers)
        answer = await response.json()
        assert (response.status, why in answer["error"]) == (status, True), answer
        assert client.app[COUNTERS]["phone_call_me_refused"] == 1
        assert "calls_placed" not in client.app[COUNTERS]
    assert any("call-me refused" in r.getMessage() for r in caplog.records)
    assert not any(OUTBOUND["BRIDGE_API_TOKEN"] in r.getMessage() or AUTH in r.getMessage() for r in caplog.records)


async def test_the_offer_names_the_line_only_where_it_works(tmp_path):
    async with TestClient(TestServer(app(tmp_path, **OUTBOUND))) as client:
        offer = await (await client.get("/phone/call-me")).json()
        relayed = await (await client.get("/phone/call-me", headers={"X-Forwarded-For": "203.0.113.9"})).json()
    assert offer == {"available": True, "why": "", "number": phone_dial.PHONE_NUMBER, "line": "http://127.0.0.1:8090"}
    assert not relayed["available"] and "this host" in relayed["why"] and relayed["line"] == ""
    assert not any(secret in json.dumps(offer) for secret in (AUTH, OUTBOUND["BRIDGE_API_TOKEN"]))


# --- bad requests to the stand-in's browser line ---------------------------------------------------------

async def test_bad_line_requests_are_refused(caplog):
    twilio = TwilioRest(ACCOUNT, AUTH, answer="browser")
    url = await twilio.start(free_port())
    unknown = f"{url}/browser/calls/CA{'0' * 32}"
    try:
        async with aiohttp.ClientSession() as session:
            async def status(method: str, path: str, **kwargs) -> tuple[int, str]:
                async with session.request(method, path, **kwargs) as r:
                    return r.status, (await r.json())["error"]
            with caplog.at_level(logging.WARNING, logger="softphone.browser_line"):
                assert (await status("POST", f"{unknown}/answer"))[0] == 404
                assert (await status("GET", f"{unknown}/events"))[0] == 404
                assert (await status("GET", f"{unknown}/stream"))[0] == 404
                assert (await status("POST", f"{unknown}/hum"))[0] == 404
                foreign = {"Origin": "https://evil.example"}
                assert (await status("GET", f"{url}/browser", headers=foreign))[0] == 403
                assert (await status("POST", f"{unknown}/answer", headers=foreign))[0] == 403
            async with session.get(f"{url}/browser", headers={"Origin": "http://127.0.0.1:8080"}) as r:
                assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == "http://127.0.0.1:8080"
    finally:
        await twilio.stop()
    assert twilio.line.refused == 6
    assert sum("browser line" in r.getMessage() and "refused" in r.getMessage() for r in caplog.records) == 6


async def test_a_ringing_call_is_answered_or_declined_once():
    twilio = TwilioRest(ACCOUNT, AUTH, answer="browser")
    url = await twilio.start(free_port())
    twiml = '<Response><Connect><Stream url="ws://127.0.0.1:9/ws/twilio"/></Connect></Response>'
    try:
        basic = "Basic " + base64.b64encode(f"{ACCOUNT}:{AUTH}".encode()).decode()
        async with aiohttp.ClientSession(headers={"Authorization": basic}) as session:
            async with session.post(f"{url}/2010-04-01/Accounts/{ACCOUNT}/Calls.json",
                                    data={"To": "+15550100002", "From": "+15550100001", "Twiml": twiml}) as r:
                sid = (await r.json())["sid"]
            line = f"{url}/browser/calls/{sid}"
            async with session.get(f"{line}/events") as events:
                assert await events.content.readuntil(b"\n\n") == b": ringing\n\n"
                first = json.loads((await events.content.readuntil(b"\n\n")).removeprefix(b"data: "))
                assert first["status"] in ("queued", "ringing") and first["from"] == "+15550100001"
                async with session.get(f"{line}/stream") as r:
                    assert r.status == 409  # answer first
                async with session.post(f"{line}/decline") as r:
                    assert (r.status, await r.json()) == (200, {"status": "busy"})
                async with session.post(f"{line}/answer") as r:
                    assert r.status == 409 and "not ringing" in (await r.json())["error"]
                statuses = [json.loads(x.removeprefix(b"data: "))["status"] async for x in events.content
                            if x.startswith(b"data: ")]
            assert statuses[-1] == "busy"  # and the event stream ended with the call
    finally:
        await twilio.stop()
    assert twilio.calls[sid].status == "busy" and twilio.line.refused == 2


async def test_the_line_relays_the_pages_stream_signed_and_a_rest_hangup_stops_it():
    """The relay adds the upgrade's signature (which a page cannot), passes messages both ways unchanged,
    and when the bridge hangs up through the REST API, sends the bridge Twilio's `stop`."""
    heard: list[str] = []
    upgrade: dict[str, str] = {}

    async def bridge_stream(request: web.Request) -> web.WebSocketResponse:
        upgrade["signature"] = request.headers.get("X-Twilio-Signature", "")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            heard.append(msg.data)
            if json.loads(msg.data)["event"] == "start":
                await ws.send_str('{"event":"clear","streamSid":"MZ1"}')
        return ws

    bridge = web.Application()
    bridge.router.add_get("/ws/twilio", bridge_stream)
    runner = web.AppRunner(bridge)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    twilio = TwilioRest(ACCOUNT, AUTH, answer="browser")
    url = await twilio.start(free_port())
    stream_url = f"ws://127.0.0.1:{port}/ws/twilio"
    twiml = (f'<Response><Connect><Stream url="{stream_url}"><Parameter name="token" value="t1"/></Stream>'
             '</Connect></Response>')
    basic = "Basic " + base64.b64encode(f"{ACCOUNT}:{AUTH}".encode()).decode()
    calls = f"{url}/2010-04-01/Accounts/{ACCOUNT}/Calls"
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{calls}.json", headers={"Authorization": basic},
                                    data={"To": "+15550100002", "From": "+15550100001", "Twiml": twiml}) as r:
                sid = (await r.json())["sid"]
            line = f"{url}/browser/calls/{sid}"
            await wait_until(lambda: twilio.calls[sid].status == "ringing")
            async with session.post(f"{line}/answer", headers={"Origin": "http://127.0.0.1:8080"}) as r:
                answered = await r.json()
            assert answered == {"call_sid": sid, "account_sid": ACCOUNT, "stream_url": f"ws{line[4:]}/stream",
                                "parameters": {"token": "t1"}}
            async with session.ws_connect(answered["stream_url"]) as page:
                await page.send_str('{"event":"connected","protocol":"Call","version":"1.0.0"}')
                start = {"event": "start", "sequenceNumber": "1", "streamSid": "MZ1", "start": {"callSid": sid}}
                await page.send_str(json.dumps(start))
                assert (await page.receive()).data == '{"event":"clear","streamSid":"MZ1"}'
                async with session.post(f"{calls}/{sid}.json", headers={"Authorization": basic},
                                        data={"Status": "completed"}) as r:
                    assert r.status == 200
                assert (await page.receive()).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            await asyncio.wait_for(twilio.calls[sid].done.wait(), 10)
    finally:
        await twilio.stop()
        await runner.cleanup()
    assert upgrade["signature"] == upgrade_headers(AUTH, stream_url)["X-Twilio-Signature"]
    assert [json.loads(x)["event"] for x in heard] == ["connected", "start", "stop"]
    assert json.loads(heard[2]) == {"event": "stop", "sequenceNumber": "2", "streamSid": "MZ1",
                                    "stop": {"accountSid": ACCOUNT, "callSid": sid}}
    assert twilio.calls[sid].status == "completed"


async def wait_until(predicate, timeout: float = 5.0) -> None:
    async def poll():
        while not predicate():
            await asyncio.sleep(0.02)
    await asyncio.wait_for(poll(), timeout)


async def test_a_call_nobody_answers_ends_no_answer_after_the_requests_timeout():
    twilio = TwilioRest(ACCOUNT, AUTH, answer="browser")
    url = await twilio.start(free_port())
    basic = "Basic " + base64.b64encode(f"{ACCOUNT}:{AUTH}".encode()).decode()
    twiml = '<Response><Connect><Stream url="ws://127.0.0.1:9/ws/twilio"/></Connect></Response>'
    try:
        async with aiohttp.ClientSession(headers={"Authorization": basic}) as session:
            async with session.post(f"{url}/2010-04-01/Accounts/{ACCOUNT}/Calls.json", data={
                    "To": "+15550100002", "From": "+15550100001", "Twiml": twiml, "Timeout": "5"}) as r:
                sid = (await r.json())["sid"]
        await asyncio.wait_for(twilio.calls[sid].done.wait(), 30)
    finally:
        await twilio.stop()
    assert twilio.calls[sid].status == "no-answer" and not twilio.calls[sid].answered_at
