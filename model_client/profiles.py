"""The model's profile (common/model_profiles.py) in the SDK's types: the model-specific parts of the
session config, a tool declaration's ``behavior`` and a tool response's ``scheduling``.

A declaration carries ``behavior`` only where it differs from what the model assumes: a model that
has no NON_BLOCKING (or a platform that refuses the field) then never sees one, and the default
generation's NON_BLOCKING is what it would do anyway. A response carries ``scheduling`` only for a
NON_BLOCKING call on a model that honours it.
"""

from __future__ import annotations

from google.genai import types

from common.model_profiles import NON_BLOCKING, SCHEDULINGS, WHEN_IDLE, Profile, lookup, thinking, vocabulary
from common.settings import Settings

__all__ = ["Profile", "lookup", "session_options", "behavior", "scheduling", "ToolRefused"]


class ToolRefused(ValueError):
    """A tool asks for a behaviour or scheduling the model does not take; the message names both."""


def session_options(settings: Settings, profile: Profile) -> dict:
    """The LiveConnectConfig fields that depend on the model (settings already checked against it)."""
    options: dict = {"input_audio_transcription": types.AudioTranscriptionConfig(
        custom_vocabulary=list(vocabulary(settings.vocabulary)) or None)}
    knob = thinking(settings.thinking, profile)
    if knob is not None:
        kind, value = knob
        options["thinking_config"] = types.ThinkingConfig(thinking_budget=value) if kind == "budget" \
            else types.ThinkingConfig(thinking_level=types.ThinkingLevel(value))
    if settings.proactive_audio is not None and profile.proactive_audio == "config":
        options["proactivity"] = types.ProactivityConfig(proactive_audio=settings.proactive_audio)
    if settings.affective_dialog is not None and profile.affective_dialog == "config":
        options["enable_affective_dialog"] = settings.affective_dialog
    return options


def effective_behavior(profile: Profile, wanted: str, tool: str) -> str:
    """The behaviour a tool's calls have on this model: its own (if the model takes it) or the model's."""
    if not wanted:
        return profile.default_behavior
    if wanted not in profile.behaviors:
        raise ToolRefused(f"tool {tool!r} asks for behavior {wanted}, which model {profile.name} does not "
                          f"take (it takes {', '.join(profile.behaviors)})")
    return wanted


def behavior(profile: Profile, wanted: str, tool: str) -> types.Behavior | None:
    """The declaration's ``behavior`` field: None where the model's default is meant."""
    chosen = effective_behavior(profile, wanted, tool)
    return None if chosen == profile.default_behavior else types.Behavior(chosen)


def scheduling(profile: Profile, wanted: str, tool: str, behavior_wanted: str = "") \
        -> types.FunctionResponseScheduling | None:
    """The scheduling of the tool's responses: its own, else WHEN_IDLE (speak the result once the model
    is quiet, never over the caller), for NON_BLOCKING calls on a model that honours it; else None."""
    if wanted and wanted not in SCHEDULINGS:
        raise ToolRefused(f"tool {tool!r}: scheduling must be one of {', '.join(SCHEDULINGS)}, got {wanted!r}")
    non_blocking = effective_behavior(profile, behavior_wanted, tool) == NON_BLOCKING
    if not (profile.scheduling and non_blocking):
        if wanted:
            raise ToolRefused(f"tool {tool!r} asks for scheduling {wanted}, which model {profile.name} "
                              f"does not take for its {'calls' if non_blocking else 'BLOCKING calls'}")
        return None
    return types.FunctionResponseScheduling(wanted or WHEN_IDLE)
