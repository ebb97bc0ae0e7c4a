"""Gemini Live wire format for the emulator (pure): client frames in, server frames out.

Client frames mix spellings: the SDK sends ``realtime_input`` and ``mime_type``
but ``audioStreamEnd`` and ``realtimeInputConfig``, and passes sub-objects such as
``automatic_activity_detection`` through unchanged. So every key is normalised to snake_case,
recursively, before any field is read. Server frames use camelCase top-level keys only (an unknown
top-level key crashes the SDK) and stay far below the SDK's 1 MiB frame limit.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from typing import Any

CLIENT_KINDS = ("setup", "realtime_input", "client_content", "tool_response", "context_update")
INPUT_RATE = 16000
OUTPUT_MIME = "audio/pcm;rate=24000"
MAX_FRAME = 1 << 20
_CAMEL = re.compile(r"(?<=[a-z0-9])([A-Z])")
_URLSAFE = bytes.maketrans(b"-_", b"+/")


class Malformed(ValueError):
    """A client frame the real service would reject; the session closes with 1007."""


@functools.lru_cache(maxsize=512)  # a session sends the same few keys 25 times a second
def snake(key: str) -> str:
    return _CAMEL.sub(r"_\1", key).lower()


def normalise(value: Any) -> Any:
    if isinstance(value, dict):
        return {snake(k) if isinstance(k, str) else k: normalise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalise(v) for v in value]
    return value


def parse(raw: str | bytes) -> tuple[str, dict]:
    """One client frame → (kind, body), keys in snake_case; ``Malformed`` if it is not one."""
    try:
        message = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise Malformed(f"not JSON: {e}") from None
    if not isinstance(message, dict):
        raise Malformed(f"not a JSON object but {type(message).__name__}")
    message = normalise(message)
    kinds = [k for k in message if k in CLIENT_KINDS]
    unknown = sorted(set(message) - set(CLIENT_KINDS))
    if len(kinds) != 1 or unknown:
        raise Malformed(f"expected exactly one of {', '.join(CLIENT_KINDS)}; got keys {sorted(message)}")
    body = message[kinds[0]]
    if not isinstance(body, dict):
        raise Malformed(f"{kinds[0]} must be an object")
    return kinds[0], body


def audio_of(realtime_input: dict) -> list[bytes]:
    """The PCM16 16 kHz chunks in a ``realtime_input`` (``audio`` and the legacy ``media_chunks``)."""
    blobs = [realtime_input["audio"]] if "audio" in realtime_input else []
    chunks = realtime_input.get("media_chunks", [])
    if not isinstance(chunks, list):
        raise Malformed("media_chunks must be a list")
    return [_pcm(blob) for blob in blobs + chunks]


def _pcm(blob: Any) -> bytes:
    if not isinstance(blob, dict) or not isinstance(blob.get("data"), str):
        raise Malformed("an audio blob needs a base64 string 'data'")
    mime = str(blob.get("mime_type", "")).replace(" ", "").lower()
    if not mime.startswith("audio/pcm"):
        raise Malformed(f"unsupported audio mime type {mime!r} (expected audio/pcm;rate=16000)")
    rate = re.search(r"rate=(\d+)", mime)
    if rate and int(rate.group(1)) != INPUT_RATE:
        raise Malformed(f"the emulator takes 16 kHz input only, got {mime!r}")
    return b64decode(blob["data"])


def b64decode(text: str) -> bytes:
    """Either alphabet, padded or not (the SDK sends URL-safe with padding; proto3 JSON allows all).
    Checked in C (strict mode) rather than by base64.b64decode's regex: this runs on every frame."""
    try:
        data = text.encode("ascii").translate(_URLSAFE)
        return binascii.a2b_base64(data + b"=" * (-len(data) % 4), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError) as e:
        raise Malformed(f"bad base64 audio: {e}") from None


def text_of(client_content: dict) -> str:
    """The text of the user turns in a ``client_content``."""
    turns = client_content.get("turns") or []
    parts = [p for t in turns if isinstance(t, dict) for p in (t.get("parts") or [])]
    return " ".join(p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str))


# Server frames. Each returns the JSON text to send.

def _frame(message: dict) -> str:
    text = json.dumps(message, separators=(",", ":"))
    if len(text) >= MAX_FRAME:
        raise AssertionError(f"server frame of {len(text)} bytes would break the SDK's 1 MiB limit")
    return text


def setup_complete() -> str:
    return _frame({"setupComplete": {}})


def audio(pcm24k: bytes, transcript: str = "") -> str:
    """A chunk of the model's audio; with ``transcript``, its output transcription in the same event
    (the generations that send several parts per event)."""
    data = base64.b64encode(pcm24k).decode("ascii")  # standard alphabet, as proto3 JSON writes bytes
    # Formatted, not json.dumps'd: a reply streams many of these, and base64 needs no escaping.
    said = ',"outputTranscription":{"text":%s}' % json.dumps(transcript) if transcript else ""
    text = '{"serverContent":{"modelTurn":{"parts":[{"inlineData":{"mimeType":"%s","data":"%s"}}]}%s}}' % (
        OUTPUT_MIME, data, said)
    if len(text) >= MAX_FRAME:
        raise AssertionError(f"server frame of {len(text)} bytes would break the SDK's 1 MiB limit")
    return text


def output_transcription(text: str) -> str:
    return _frame({"serverContent": {"outputTranscription": {"text": text}}})


def input_transcription(text: str) -> str:
    return _frame({"serverContent": {"inputTranscription": {"text": text, "finished": True}}})


def generation_complete() -> str:
    return _frame({"serverContent": {"generationComplete": True}})


def turn_complete(prompt: dict[str, int], response: dict[str, int]) -> str:
    """``turnComplete`` with the turn's ``usageMetadata``: token counts by modality (AUDIO, TEXT)."""
    prompt_n, response_n = sum(prompt.values()), sum(response.values())
    return _frame({"serverContent": {"turnComplete": True}, "usageMetadata": {
        "promptTokenCount": prompt_n, "responseTokenCount": response_n,
        "totalTokenCount": prompt_n + response_n,
        "promptTokensDetails": _details(prompt), "responseTokensDetails": _details(response)}})


def _details(counts: dict[str, int]) -> list[dict]:
    return [{"modality": k, "tokenCount": n} for k, n in sorted(counts.items()) if n]


def voice_activity(start: bool) -> str:
    """The service's own VAD saw the caller start or stop (the wire key is ``type``)."""
    return _frame({"voiceActivity": {"type": "ACTIVITY_START" if start else "ACTIVITY_END"}})


def interrupted() -> str:
    return _frame({"serverContent": {"interrupted": True}})


def resumption_update(handle: str) -> str:
    return _frame({"sessionResumptionUpdate": {"newHandle": handle, "resumable": True}})


def go_away(seconds: float) -> str:
    """``timeLeft`` is a proto Duration string ("5s", "0.2s"); the SDK hands it over unparsed."""
    return _frame({"goAway": {"timeLeft": f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"}})


def tool_call(call_id: str, name: str, args: dict) -> str:
    return _frame({"toolCall": {"functionCalls": [{"id": call_id, "name": name, "args": args}]}})


def tool_call_cancellation(ids: list[str]) -> str:
    return _frame({"toolCallCancellation": {"ids": ids}})


def tool_responses(tool_response: dict) -> list[tuple[str, dict, str]]:
    """(id, response, scheduling) of each function response in a (snake-normalised) tool_response;
    scheduling "" when it names none."""
    found = []
    for r in tool_response.get("function_responses") or []:
        if not isinstance(r, dict) or not isinstance(r.get("id"), str):
            raise Malformed("tool_response.function_responses[] needs an id")
        found.append((r["id"], r.get("response") if isinstance(r.get("response"), dict) else {},
                      str(r.get("scheduling") or "")))
    return found
