"""What each Gemini Live model accepts and how it behaves: one ``Profile`` per model generation, looked up
by model id (exact, then patterns), and the start-time check of the settings against it.

Each generation has broken bridges written for the one before it (function-call defaults, thinking,
proactivity, affective dialog), so the session config is built from the profile
(model_client/profiles.py) and a setting the chosen model refuses stops the process at start, naming
the setting and the model, instead of a close 1007 in the middle of a call. The gateway's process
(``python -m common.stack``) runs the same check, so ``make run`` refuses too.

Sources (re-check them before adding a model): https://ai.google.dev/gemini-api/docs/models ,
https://ai.google.dev/gemini-api/docs/live-tools , https://ai.google.dev/gemini-api/docs/changelog and
the Vertex AI Live API pages, https://cloud.google.com/vertex-ai/generative-ai/docs/live-api .
Plain strings, no SDK types: the stack's launcher checks settings without importing the SDK.
"""

from __future__ import annotations

import fnmatch
from typing import NamedTuple

from common.setting_types import SettingsError

BLOCKING, NON_BLOCKING = "BLOCKING", "NON_BLOCKING"  # types.Behavior
SILENT, WHEN_IDLE, INTERRUPT = "SILENT", "WHEN_IDLE", "INTERRUPT"  # types.FunctionResponseScheduling
SCHEDULINGS = (SILENT, WHEN_IDLE, INTERRUPT)
THINKING_LEVELS = ("MINIMAL", "LOW", "MEDIUM", "HIGH")  # types.ThinkingLevel
THINKING_BUDGET_MAX = 32768  # -1 lets the model choose; 0 turns thinking off
# A knob: "config" (sent when set), "always" (on; setting it false is refused), "refused" (any value is).
CONFIG, ALWAYS, REFUSED = "config", "always", "refused"
GEMINI_API, VERTEX = "gemini", "vertex"


class Profile(NamedTuple):
    name: str  # the model id (or family) this describes
    platforms: tuple[str, ...]  # GEMINI_API and/or VERTEX (the emulator speaks the Gemini API)
    default_behavior: str  # what the server assumes for a declaration with no ``behavior``
    behaviors: tuple[str, ...]  # the behaviours a declaration may ask for on these platforms
    scheduling: bool  # FunctionResponse.scheduling honoured (for NON_BLOCKING calls)
    interrupt: str  # what scheduling INTERRUPT does on this model ("" without scheduling)
    thinking: str  # the thinking knob: "budget", "level" or "none" (thinking_config refused)
    proactive_audio: str  # CONFIG, ALWAYS or REFUSED
    affective_dialog: str  # CONFIG or REFUSED
    parts_per_event: str  # "one" or "several" (audio and text parts in one server event)
    vocabulary: bool  # input transcription takes custom_vocabulary
    notes: str = ""  # what else differs, for the docs and the start log line
    known: bool = True  # False: the conservative profile of an id not in the table


GEMINI_3_8 = Profile(
    # https://ai.google.dev/gemini-api/docs/models/gemini-3.8-live (migration notes)
    name="gemini-3.8-live", platforms=(GEMINI_API, VERTEX),
    default_behavior=NON_BLOCKING, behaviors=(BLOCKING, NON_BLOCKING), scheduling=True,
    interrupt="waits until the caller stops talking, then speaks the result",
    thinking="none", proactive_audio=ALWAYS, affective_dialog=REFUSED, parts_per_event="several",
    vocabulary=True,
    notes="a BLOCKING call is cancelled by the server when new input arrives; interruption is polite "
          "(waits for the caller)")
GEMINI_3_1 = Profile(
    # https://ai.google.dev/gemini-api/docs/models/gemini-3.1-flash-live-preview
    name="gemini-3.1-flash-live-preview", platforms=(GEMINI_API,),
    default_behavior=BLOCKING, behaviors=(BLOCKING,), scheduling=False, interrupt="",
    # Setting proactivity or affective dialog has been reported to keep setup from completing.
    thinking="level", proactive_audio=REFUSED, affective_dialog=REFUSED, parts_per_event="several",
    vocabulary=False, notes="synchronous function calling only; the legacy media_chunks input is refused")
GEMINI_2_5 = Profile(
    # https://ai.google.dev/gemini-api/docs/live-tools (asynchronous function calling)
    name="gemini-2.5-flash-native-audio-preview", platforms=(GEMINI_API,),
    default_behavior=BLOCKING, behaviors=(BLOCKING, NON_BLOCKING), scheduling=True,
    interrupt="stops the model and speaks the result at once, even over the caller",
    thinking="budget", proactive_audio=CONFIG, affective_dialog=CONFIG, parts_per_event="one",
    vocabulary=False, notes="interruption is immediate")
VERTEX_2_5 = GEMINI_2_5._replace(
    # Vertex's SDK path refused behavior=NON_BLOCKING (https://github.com/googleapis/python-genai/issues/1739):
    # declarations stay BLOCKING, so no response needs scheduling.
    name="gemini-live-2.5-flash-native-audio", platforms=(VERTEX,), behaviors=(BLOCKING,),
    scheduling=False, interrupt="", notes="interruption is immediate; NON_BLOCKING refused on Vertex")
UNKNOWN = Profile(
    # Nothing model-specific is sent: declarations without behaviour, responses without scheduling.
    name="unknown", platforms=(GEMINI_API, VERTEX), default_behavior=BLOCKING, behaviors=(BLOCKING,),
    scheduling=False, interrupt="", thinking="none", proactive_audio=REFUSED, affective_dialog=REFUSED,
    parts_per_event="several", vocabulary=False, known=False)

# Exact ids first, then patterns (fnmatch), in order.
PROFILES: tuple[tuple[str, Profile], ...] = (
    ("gemini-3.8-live", GEMINI_3_8),
    ("gemini-3.1-flash-live-preview", GEMINI_3_1),
    ("gemini-2.5-flash-native-audio-preview-12-2025", GEMINI_2_5),
    ("gemini-2.5-flash-native-audio-preview-09-2025", GEMINI_2_5),
    ("gemini-live-2.5-flash-native-audio", VERTEX_2_5),
    ("gemini-3.8-live-*", GEMINI_3_8),
    ("gemini-3.1-flash-live*", GEMINI_3_1),
    ("gemini-2.5-flash-native-audio*", GEMINI_2_5),
    ("gemini-live-2.5-flash*native-audio*", VERTEX_2_5),
)
# Shut down on 2025-12-09 (https://ai.google.dev/gemini-api/docs/changelog): a session would never open.
RETIRED = ("gemini-2.0-flash-live-001", "gemini-live-2.5-flash-preview")
DEFAULT_MODEL = "gemini-3.8-live"


def model_id(model: str) -> str:
    """``models/x`` and Vertex's ``publishers/google/models/x`` name the model ``x``."""
    return model.rsplit("/", 1)[-1].strip()


def lookup(model: str) -> Profile:
    """The model's profile; ``UNKNOWN`` (conservative) for an id not in the table."""
    wanted = model_id(model)
    for pattern, profile in PROFILES:
        if wanted == pattern or ("*" in pattern and fnmatch.fnmatchcase(wanted, pattern)):
            return profile
    return UNKNOWN._replace(name=wanted)


def platform(backend: str) -> str:
    return VERTEX if backend == "vertex" else GEMINI_API  # the emulator speaks the Gemini API


def thinking(value: str, profile: Profile) -> tuple[str, int | str] | None:
    """GEMINI_THINKING for this model: ("budget", tokens), ("level", LEVEL) or None (the model's
    default); a value the model cannot take is a SettingsError naming both."""
    value = value.strip()
    if not value:
        return None
    model = _named(profile)
    if profile.thinking == "none":
        raise SettingsError(f"GEMINI_THINKING={value!r}: {model} takes no thinking setting; unset it")
    if profile.thinking == "level":
        if value.upper() not in THINKING_LEVELS:
            raise SettingsError(f"GEMINI_THINKING={value!r}: {model} takes a thinking level, one of "
                                f"{', '.join(THINKING_LEVELS)}")
        return "level", value.upper()
    try:
        budget = int(value)
    except ValueError:
        budget = None
    if budget is None or not -1 <= budget <= THINKING_BUDGET_MAX:
        raise SettingsError(f"GEMINI_THINKING={value!r}: {model} takes a thinking budget in tokens, "
                            f"-1 (the model chooses), 0 (off) up to {THINKING_BUDGET_MAX}")
    return "budget", budget


def vocabulary(value: str) -> tuple[str, ...]:
    """GEMINI_VOCABULARY: comma-separated terms."""
    return tuple(term.strip() for term in value.split(",") if term.strip())


def _named(profile: Profile) -> str:
    return f"model {profile.name}" + ("" if profile.known else " (not one the bridge knows)")


def _knob(env: str, value: bool | None, rule: str, profile: Profile) -> None:
    if value is None:
        return
    if rule == REFUSED:
        raise SettingsError(f"{env}={str(value).lower()}: {_named(profile)} does not take it (a session "
                            f"could fail to open); unset it")
    if rule == ALWAYS and not value:
        raise SettingsError(f"{env}=false: {_named(profile)} has it always on and refuses false; unset it")


def check(settings) -> tuple[Profile, list[str]]:
    """The model's profile and the warnings to log once at start; a setting the model refuses is a
    SettingsError naming the setting and the model. ``settings``: common.settings.Settings."""
    model = model_id(settings.model)
    if model in RETIRED:
        raise SettingsError(f"GEMINI_MODEL={model}: this model was shut down on 2025-12-09; use "
                            f"{DEFAULT_MODEL}")
    profile = lookup(model)
    warnings = []
    if not profile.known:
        warnings.append(f"model {model} is not one the bridge knows: using a conservative profile (tools "
                        f"declared without a behaviour, results without scheduling, no thinking, proactivity, "
                        f"affective dialog or vocabulary setting); known: "
                        f"{', '.join(p for p, _ in PROFILES if '*' not in p)}")
    elif settings.backend in (GEMINI_API, VERTEX) and platform(settings.backend) not in profile.platforms:
        warnings.append(f"model {model} is documented for {' and '.join(profile.platforms)}, not "
                        f"{platform(settings.backend)}: the session may not open")
    thinking(settings.thinking, profile)
    _knob("GEMINI_PROACTIVE_AUDIO", settings.proactive_audio, profile.proactive_audio, profile)
    _knob("GEMINI_AFFECTIVE_DIALOG", settings.affective_dialog, profile.affective_dialog, profile)
    if vocabulary(settings.vocabulary) and not profile.vocabulary:
        raise SettingsError(f"GEMINI_VOCABULARY: {_named(profile)} takes no custom vocabulary for "
                            f"transcription; unset it")
    return profile, warnings
