"""The google-genai client and the Live session config, built with the SDK's real types (pure).

The config uses the SDK's real field names (a wrong one is a ValidationError): voice under
``speech_config``, VAD under ``realtime_input_config.automatic_activity_detection``, resumption as
``session_resumption``. What depends on the model (thinking, proactivity, affective dialog,
transcription vocabulary) comes from its profile (model_client/profiles.py). What goes on the wire once
connected (and the text frame that carries caller audio) is in gemini_wire.py.
"""

from __future__ import annotations

import dataclasses
import os
import ssl

from google import genai
from google.genai import types

from common.settings import Settings
from model_client.profiles import lookup, session_options

# Compression keeps a call going past the 15-minute audio-only limit (docs/architecture.md#gemini).
COMPRESSION = types.ContextWindowCompressionConfig(
    trigger_tokens=25600, sliding_window=types.SlidingWindow(target_tokens=12800))


# Server VAD for phone lines: line noise and a short "uh-huh" should not start the caller's turn (start
# LOW, 300 ms of speech before it counts), and a noisy line should still end it (end HIGH).
VAD_PRESETS = {"phone": {"start_sensitivity": "START_SENSITIVITY_LOW", "end_sensitivity": "END_SENSITIVITY_HIGH",
                         "prefix_padding_ms": 300, "silence_ms": 600}}


def server_vad(settings: Settings) -> types.AutomaticActivityDetection:
    """Gemini's VAD settings: the variables as set, the preset's value for each one left at its default."""
    defaults = {f.name: f.default for f in dataclasses.fields(Settings)}
    preset = VAD_PRESETS.get(settings.vad_preset, {})
    value = {name: preset.get(name, getattr(settings, name)) if getattr(settings, name) == defaults[name]
             else getattr(settings, name)
             for name in ("start_sensitivity", "end_sensitivity", "prefix_padding_ms", "silence_ms")}
    return types.AutomaticActivityDetection(
        disabled=False, silence_duration_ms=value["silence_ms"], prefix_padding_ms=value["prefix_padding_ms"],
        start_of_speech_sensitivity=value["start_sensitivity"] or None,
        end_of_speech_sensitivity=value["end_sensitivity"] or None)


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
            automatic_activity_detection=server_vad(settings),
            activity_handling=types.ActivityHandling.START_OF_ACTIVITY_INTERRUPTS),
        session_resumption=types.SessionResumptionConfig(handle=handle or None),
        context_window_compression=COMPRESSION,
        output_audio_transcription=types.AudioTranscriptionConfig(),
        **session_options(settings, lookup(settings.model)),
    )
