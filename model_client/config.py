"""The google-genai client and the Live session config, built with the SDK's real types (pure), and
the text frame that carries caller audio (``audio_text``).

Caller audio is 25 sends a second per session, and ``send_realtime_input`` spends most of each on
pydantic and the SDK's converters; a leaner path is worth having, ideally without leaning on the SDK's
internals. This one writes the same text on the session's socket, which does lean on the session's
private ``_ws`` (and ``_api_client`` for the check), so ``sends_audio_text`` checks every connection
first: anything unexpected and audio goes through the SDK's own method, as before.

The config uses the SDK's real field names (a wrong one is a ValidationError): voice under
``speech_config``, VAD under ``realtime_input_config.automatic_activity_detection``, resumption as
``session_resumption``.
"""

from __future__ import annotations

import base64
import json
import os
import ssl

from google import genai
from google.genai import types

from common.settings import Settings

INPUT_MIME = "audio/pcm;rate=16000"

# Compression keeps a call going past the 15-minute audio-only limit (docs/architecture.md#gemini).
COMPRESSION = types.ContextWindowCompressionConfig(
    trigger_tokens=25600, sliding_window=types.SlidingWindow(target_tokens=12800))


def make_client(settings: Settings) -> genai.Client:
    """One client per process. permessage-deflate is off: it costs CPU for little gain on audio
    (docs/performance.md#code-choices)."""
    args: dict = {"compression": None}
    options = dict(api_version="v1beta")
    if settings.backend == "emulator":
        if not os.path.exists(settings.emulator_cert):
            raise FileNotFoundError(
                f"emulator certificate {settings.emulator_cert} not found: is the emulator running?")
        args["ssl"] = ssl.create_default_context(cafile=settings.emulator_cert)
        options["base_url"] = settings.emulator_base_url
    http = types.HttpOptions(async_client_args=args, **options)
    if settings.backend == "vertex":
        return genai.Client(vertexai=True, project=settings.gcp_project or None,
                            location=settings.gcp_location, http_options=http)
    return genai.Client(api_key=settings.api_key or "emulator", http_options=http)


def live_config(settings: Settings, handle: str = "", tools: list[types.Tool] | None = None,
                instruction: str = "") -> types.LiveConnectConfig:
    """``instruction`` replaces the system instruction (a fresh session told the conversation so far)."""
    return types.LiveConnectConfig(
        response_modalities=[types.Modality.AUDIO],
        temperature=settings.temperature,
        tools=tools,
        speech_config=types.SpeechConfig(
            voice_config=types.VoiceConfig(
                prebuilt_voice_config=types.PrebuiltVoiceConfig(voice_name=settings.voice)),
            language_code=settings.language),
        system_instruction=instruction or settings.system_instruction,
        realtime_input_config=types.RealtimeInputConfig(
            automatic_activity_detection=types.AutomaticActivityDetection(
                disabled=False, silence_duration_ms=settings.silence_ms,
                prefix_padding_ms=settings.prefix_padding_ms,
                start_of_speech_sensitivity=settings.start_sensitivity or None,
                end_of_speech_sensitivity=settings.end_sensitivity or None),
            activity_handling=types.ActivityHandling.START_OF_ACTIVITY_INTERRUPTS),
        session_resumption=types.SessionResumptionConfig(handle=handle or None),
        context_window_compression=COMPRESSION,
        input_audio_transcription=types.AudioTranscriptionConfig(),
        output_audio_transcription=types.AudioTranscriptionConfig(),
    )


def audio_blob(pcm16k: bytes) -> types.Blob:
    return types.Blob(data=pcm16k, mime_type=INPUT_MIME)


def audio_text(pcm16k: bytes) -> str:
    """The text frame ``send_realtime_input(audio=audio_blob(pcm16k))`` sends (docs/architecture.md#gemini),
    built directly, without the SDK's pydantic validation and converters, which cost more than the
    rest of a send (docs/performance.md#code-choices)."""
    data = base64.urlsafe_b64encode(pcm16k).decode("ascii")
    return '{"realtime_input": {"audio": {"data": "%s", "mime_type": "%s"}}}' % (data, INPUT_MIME)


class _Capture:
    """Stands in for the SDK session's WebSocket: keeps what would be sent."""
    def __init__(self):
        self.sent: list[str] = []

    async def send(self, text: str) -> None:
        self.sent.append(text)


async def sends_audio_text(session: object) -> bool:
    """Whether this SDK's ``send_realtime_input`` sends exactly ``audio_text`` (as a JSON value) on
    ``session._ws``, checked with a probe session on a capturing socket. If not (another SDK
    version), audio goes through the SDK's own method."""
    if not hasattr(session, "_ws") or not hasattr(session, "_api_client"):
        return False
    pcm = bytes([0xfb, 0xff, 0xbf, 0x00, 0x01, 0x7f]) * 11  # both URL-safe characters, and padding
    capture = _Capture()
    try:
        probe = type(session)(api_client=session._api_client, websocket=capture)
        await probe.send_realtime_input(audio=audio_blob(pcm))
        return [json.loads(text) for text in capture.sent] == [json.loads(audio_text(pcm))]
    except Exception:  # noqa: BLE001 - any surprise means: use the SDK's method
        return False
