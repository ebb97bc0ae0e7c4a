"""How each Gemini Live model generation behaves, as far as Google documents it (pure).

The emulator reads the model id from ``setup`` and plays that generation. Sources, per family:

- ``gemini-3.8-live``: https://ai.google.dev/gemini-api/docs/models/gemini-3.8-live and the migration
  guide https://docs.cloud.google.com/gemini-enterprise-agent-platform/models/live-api/migrate-from-gemini-2-5-to-gemini-3-8-live
  (function calls NON_BLOCKING by default; a BLOCKING call is cancelled when new input arrives;
  ``scheduling=INTERRUPT`` waits until the user has finished; ``proactive_audio: false``,
  ``enable_affective_dialog`` and ``thinking_config`` are errors).
- ``gemini-3.1-flash-live-preview``: https://ai.google.dev/gemini-api/docs/live-api/capabilities
  (several parts in one server event; synchronous function calling only; ``media_chunks`` refused).
- ``gemini-2.5-flash-native-audio-*`` / ``gemini-live-2.5-flash-native-audio``: one part per event;
  async function calling when a declaration says ``NON_BLOCKING``
  (https://docs.cloud.google.com/gemini-enterprise-agent-platform/models/live-api/asynchronous-function-calling);
  ``scheduling=INTERRUPT`` speaks at once, even over the user (the 3.8 migration guide, above).

A model id of no known family keeps the emulator's plain behaviour (one part per event, BLOCKING
tools, nothing refused, no voice activity events): the conservative choice, not a generation.

What the documentation leaves open is marked "undocumented" where the emulator has to pick something.
"""

from __future__ import annotations

import re
from typing import NamedTuple

BLOCKING, NON_BLOCKING = "BLOCKING", "NON_BLOCKING"
SILENT, WHEN_IDLE, INTERRUPT = "SILENT", "WHEN_IDLE", "INTERRUPT"
SCHEDULINGS = (SILENT, WHEN_IDLE, INTERRUPT)
INVALID_ARGUMENT = 1007  # the close code the service uses for a setup or frame it refuses


class Generation(NamedTuple):
    name: str
    tool_default: str  # the behaviour of a declaration that names none
    async_tools: bool  # whether a NON_BLOCKING declaration is honoured
    interrupt_waits_for_caller: bool  # scheduling=INTERRUPT while the caller talks: wait (3.8) or cut in
    parts_per_event: int  # 1: audio and its transcript in separate events; 2: together
    refuses_media_chunks: bool
    refuses_no_proactive_audio: bool
    refuses_affective_dialog: bool
    refuses_thinking_config: bool
    voice_activity: bool  # sends voiceActivity start/end events from its own VAD
    client_turn_interrupts: bool = False  # client_content with turn_complete cuts any generation


GEMINI_3_8 = Generation(
    name="gemini-3.8-live", tool_default=NON_BLOCKING, async_tools=True, interrupt_waits_for_caller=True,
    parts_per_event=2, refuses_media_chunks=False, refuses_no_proactive_audio=True,
    refuses_affective_dialog=True, refuses_thinking_config=True, voice_activity=False,
    client_turn_interrupts=True)
# Undocumented for 3.8: whether the legacy media_chunks field is refused (its guide only shows `audio`):
# accepted here. Undocumented per model: which models send ``voiceActivity`` (the Firebase reference,
# https://firebase.google.com/docs/reference/swift/firebaseailogic/api/reference/Structs/LiveServerVoiceActivity,
# describes the event for the Live API without naming models). The emulator sends it on 3.1 and 2.5
# and not on 3.8, so that both ways are exercised: the bridge must barge in with or without it.

GEMINI_3_1 = Generation(
    name="gemini-3.1-flash-live", tool_default=BLOCKING, async_tools=False, interrupt_waits_for_caller=False,
    parts_per_event=2, refuses_media_chunks=True, refuses_no_proactive_audio=False,
    refuses_affective_dialog=False, refuses_thinking_config=False, voice_activity=True)
# Undocumented for 3.1: what a NON_BLOCKING declaration does on a model with synchronous calling only
# (played as BLOCKING here), and whether proactivity / affective dialog in setup are refused (reported
# by users, not documented: accepted here).

GEMINI_2_5 = Generation(
    name="gemini-2.5-flash-native-audio", tool_default=BLOCKING, async_tools=True,
    interrupt_waits_for_caller=False, parts_per_event=1, refuses_media_chunks=False,
    refuses_no_proactive_audio=False, refuses_affective_dialog=False, refuses_thinking_config=False,
    voice_activity=True)

PLAIN = Generation(
    name="unknown", tool_default=BLOCKING, async_tools=False, interrupt_waits_for_caller=False,
    parts_per_event=1, refuses_media_chunks=False, refuses_no_proactive_audio=False,
    refuses_affective_dialog=False, refuses_thinking_config=False, voice_activity=False)

FAMILIES = (
    (re.compile(r"^gemini-3\.8-live"), GEMINI_3_8),
    (re.compile(r"^gemini-3\.1-flash-live"), GEMINI_3_1),
    (re.compile(r"^gemini-(live-)?2\.5-flash(-preview)?-native-audio"), GEMINI_2_5),
)


def model_name(model: str) -> str:
    """``models/x``, ``publishers/google/models/x`` or ``projects/p/locations/l/publishers/google/models/x``
    → ``x``."""
    return model.rsplit("/", 1)[-1]


def of_model(model: str) -> Generation:
    name = model_name(model)
    return next((gen for pattern, gen in FAMILIES if pattern.match(name)), PLAIN)


def refusal(gen: Generation, setup: dict) -> str:
    """Why ``gen`` refuses this setup (keys normalised to snake_case), or "" if it takes it. The close
    reasons are ours: the documentation says these settings are errors, not with which words."""
    generation = setup.get("generation_config") or {}
    proactivity = setup.get("proactivity") or generation.get("proactivity") or {}
    model = gen.name
    if gen.refuses_no_proactive_audio and proactivity.get("proactive_audio") is False:
        return f"proactive_audio cannot be false on {model}: proactive audio is always on"
    if gen.refuses_affective_dialog and ("enable_affective_dialog" in generation
                                         or "enable_affective_dialog" in setup):
        return f"enable_affective_dialog is not supported on {model}"
    if gen.refuses_thinking_config and ("thinking_config" in generation or "thinking_config" in setup):
        return f"thinking_config is not supported on {model}"
    return ""


def tool_behaviours(gen: Generation, setup: dict) -> dict[str, str]:
    """Each declared function's behaviour on this generation: its own, else the generation's default;
    NON_BLOCKING only where the generation runs tools asynchronously."""
    found = {}
    for tool in setup.get("tools") or []:
        for decl in (tool.get("function_declarations") or []) if isinstance(tool, dict) else []:
            if isinstance(decl, dict) and isinstance(decl.get("name"), str):
                behaviour = decl.get("behavior") or gen.tool_default
                found[decl["name"]] = behaviour if gen.async_tools else BLOCKING
    return found


def scheduling_of(response: dict) -> str:
    """A function response's scheduling. Undocumented: what a NON_BLOCKING result without one does;
    the emulator speaks it when idle, the gentlest of the three."""
    value = response.get("scheduling")
    return value if value in SCHEDULINGS else WHEN_IDLE
