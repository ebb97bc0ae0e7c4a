"""``python -m softphone call``: place one call from the command line and keep what was heard.
``python -m softphone outbound``: have the bridge dial out, and answer through the Twilio REST stand-in.
``python -m softphone line``: the stand-in alone, ringing the browser phone (``/phone``'s "Call me")."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import wave
from collections.abc import Mapping
from pathlib import Path

import aiohttp
import numpy as np

from common.g711 import decode_ulaw
from softphone.caller import CallError, CallResult, place_call
from softphone.speech import speech_like
from softphone.twilio_rest import ANSWERS, TwilioRest, call_outbound

RATE = 8000


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m softphone",
                                     description="Place a call to the bridge the way Twilio would.")
    commands = parser.add_subparsers(dest="command", required=True)
    call = commands.add_parser("call", help="place a call the way Twilio would")
    call.add_argument("--url", required=True, help="the bridge's base URL; Twilio POSTs {url}/twiml")
    said = call.add_mutually_exclusive_group(required=True)
    said.add_argument("--wav", type=Path, help="what the caller says: a mono PCM16 WAV at any rate")
    said.add_argument("--say-tone", action="store_true",
                      help="say a synthetic speech-like signal (voiced, f0 120–220 Hz) instead")
    call.add_argument("--seconds", type=float, default=2.0, help="length of --say-tone (default 2)")
    call.add_argument("--seed", type=int, default=0, help="seed of --say-tone")
    call.add_argument("--out", type=Path, required=True, help="WAV (PCM16 8 kHz mono) of what was heard")
    call.add_argument("--summary", type=Path, help="also write the JSON summary here")
    call.add_argument("--fast", action="store_true", help="send as fast as possible on a virtual clock")
    call.add_argument("--listen", type=float, default=3.0, help="seconds of silence after speaking")
    call.add_argument("--auth-token", help="sign the webhook (default: $TWILIO_AUTH_TOKEN)")
    call.add_argument("--dtmf", action="append", default=[], type=_dtmf, metavar="SECONDS:DIGIT",
                      help="press a key at that call time, e.g. 1.5:5 (repeatable)")
    call.add_argument("--timeout", type=float, default=60.0, help="give up after this many seconds")
    out = commands.add_parser("outbound", help="have the bridge dial out (POST /calls) and answer through "
                                               "the local Twilio REST stand-in (docs/outbound.md)")
    out.add_argument("--url", required=True, help="the bridge's base URL")
    out.add_argument("--answer", choices=ANSWERS, default="human", help="who answers (default human)")
    out.add_argument("--to", default="+15550001111", help="the number dialled (must be on BRIDGE_DIAL_ALLOW)")
    out.add_argument("--greeting", default="Greet the callee and say that you are calling about tomorrow.",
                     help="the greeting prompt, spoken once a person answers")
    out.add_argument("--message", default="Say that we called about tomorrow's appointment.",
                     help="the voicemail message prompt (policy message); empty: hang up on machines")
    out.add_argument("--rest-port", type=int, default=8090, help="where the stand-in serves "
                                                                 "(the bridge's TWILIO_API_URL)")
    line = commands.add_parser("line", help="serve the Twilio REST stand-in until stopped; its calls ring "
                                            "the browser phone at /phone (docs/outbound.md)")
    line.add_argument("--rest-port", type=int, default=8090, help="where the stand-in serves "
                                                                  "(the bridge's TWILIO_API_URL)")
    return parser


def main(argv: list[str], env: Mapping[str, str]) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "outbound":
        return outbound(args, env)
    if args.command == "line":
        return browser_line(args.rest_port, env)
    try:
        for path in (args.out, args.summary):
            if path is not None:
                ready_to_write(path)
        audio = read_wav(args.wav) if args.wav else speech_like(args.seconds, seed=args.seed)
        result = asyncio.run(place_call(
            args.url, audio, realtime=not args.fast, listen_s=args.listen, dtmf=args.dtmf,
            auth_token=args.auth_token or env.get("TWILIO_AUTH_TOKEN") or None, timeout_s=args.timeout))
        write_wav(args.out, decode_ulaw(result.heard))
        if args.summary:
            args.summary.write_text(json.dumps(result.summary(), indent=2) + "\n")
    except (CallError, ValueError, OSError, wave.Error, aiohttp.ClientError) as exc:
        print(f"softphone: error: {exc}", file=sys.stderr)
        return 1
    print(report(result, args.out, args.summary))
    if not result.reply_heard_s:
        print(f"softphone: no reply: nothing played on the call in the {len(result.sent) / RATE:.1f} s it "
              "lasted", file=sys.stderr)
        return 1
    return 0


def outbound(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """One outbound call through the stand-in; the same credentials as the bridge's, from the environment."""
    voicemail = {"policy": "message", "text": args.message} if args.message else {"policy": "hangup"}
    request = {"to": args.to, "greeting": args.greeting, "voicemail": voicemail}
    try:
        placed, call = asyncio.run(call_outbound(
            args.url, env.get("BRIDGE_API_TOKEN", ""), request,
            answer=args.answer, port=args.rest_port, account_sid=env.get("TWILIO_ACCOUNT_SID", ""),
            auth_token=env.get("TWILIO_AUTH_TOKEN", "")))
    except (CallError, OSError, aiohttp.ClientError, TimeoutError) as exc:
        print(f"softphone: error: {exc}", file=sys.stderr)
        return 1
    heard = call.result.reply_heard_s if call.result else 0.0
    print(f"call {placed['call_sid']} to {args.to}, answered as {args.answer}: {heard:.2f} s of the bridge "
          f"heard, final status {call.status}")
    return 0


def browser_line(port: int, env: Mapping[str, str]) -> int:
    """The stand-in, with the bridge's credentials from the environment, until Ctrl-C or SIGTERM."""
    async def serve() -> None:
        twilio = TwilioRest(env.get("TWILIO_ACCOUNT_SID", ""), env.get("TWILIO_AUTH_TOKEN", ""), answer="browser")
        await twilio.start(port)
        print(f"Twilio REST stand-in on {twilio.url}: its calls ring the browser phone; open /phone on the "
              "bridge and press Call me (Ctrl-C stops it)", flush=True)
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopped.set)
        try:
            await stopped.wait()
        finally:
            await twilio.stop()
    try:
        asyncio.run(serve())
    except OSError as exc:
        print(f"softphone: error: {exc}", file=sys.stderr)
        return 1
    return 0


def ready_to_write(path: Path) -> None:
    """Make the file's folder and prove the file can be written, before the call: a path that fails
    only once the call is over loses what the call recorded."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        existed = path.exists()
        with open(path, "ab"):
            pass
    except OSError as exc:
        raise ValueError(f"cannot write {path}: {exc.strerror or exc}") from None
    if not existed:
        path.unlink()


def report(result: CallResult, wav: Path, summary: Path | None) -> str:
    """A few lines for a person: was there a reply, how soon, and where the files went."""
    latency = (f"the first began {result.turn_latencies_s[0]:.2f} s after the caller stopped speaking"
               if result.turn_latencies_s else "none began after the caller stopped speaking")
    lines = [f"call {result.call_sid}, stream {result.stream_sid}",
             f"reply: {result.reply_heard_s:.2f} s heard; {latency}",
             f"heard: {wav}" + (f"; details: {summary}" if summary else "")]
    if result.protocol_errors:
        lines.append(f"{len(result.protocol_errors)} protocol problem(s), the first: "
                     f"{result.protocol_errors[0]}")
    return "\n".join(lines)


def read_wav(path: Path) -> np.ndarray:
    """A mono PCM16 WAV as int16 at 8 kHz (resampled if needed); anything else is refused clearly."""
    with wave.open(str(path), "rb") as wav:
        if wav.getnchannels() != 1 or wav.getsampwidth() != 2 or wav.getcomptype() != "NONE":
            raise ValueError(f"{path}: need mono 16-bit PCM, got {wav.getnchannels()} channel(s) of "
                             f"{8 * wav.getsampwidth()}-bit {wav.getcomptype()}")
        rate, data = wav.getframerate(), wav.readframes(wav.getnframes())
    pcm = np.frombuffer(data, dtype="<i2").astype(np.int16)
    if rate == RATE or not len(pcm):
        return pcm
    import samplerate  # only needed for WAVs at another rate
    resampled = samplerate.resample(pcm.astype(np.float32) / 32768, RATE / rate, "sinc_best")
    return np.clip(np.round(resampled * 32768), -32768, 32767).astype(np.int16)


def write_wav(path: Path, pcm: np.ndarray) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(np.asarray(pcm, dtype="<i2").tobytes())


def _dtmf(text: str) -> tuple[float, str]:
    seconds, sep, digit = text.partition(":")
    try:
        if not sep or len(digit) != 1:
            raise ValueError
        return float(seconds), digit
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SECONDS:DIGIT such as 1.5:5, got {text!r}") from None
