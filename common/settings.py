"""Settings: read once from the environment into one frozen object, passed down.

Each variable is declared once: name, type, default, bounds or choices, description, group. The first
groups (how the processes run and who may talk to them) are declared in common/setting_process.py,
the rest below; ``load()`` reads them all in that order, and the README's configuration tables and
``python -m common.settings`` (``--markdown``) are generated from the same declarations. No other
module reads ``os.environ``; a malformed or out-of-range value is a ``SettingsError`` naming the
variable.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, fields
from functools import partial
from typing import Any, Mapping

from common import setting_readers as readers
from common.setting_process import RESAMPLERS, ProcessSettings  # noqa: F401 (RESAMPLERS: its home)
from common.setting_types import SPEC, SettingsError, Spec, declare, derived, read, setting  # noqa: F401

PERSONAS = ("echo", "tone", "silent")  # emulator/persona.py
STALLS = ("off", "no_reply", "empty_turn")  # emulator/session.py, EMULATOR_STALL
SENSITIVITY = ("HIGH", "LOW")

MODEL, CONVERSATION, OUTBOUND, FAULTS, DEVELOPMENT = (
    "Model", "Conversation", "Outbound calls", "Faults", "Development")


@dataclass(frozen=True)
class Settings(ProcessSettings):
    # The documentation lists the variables in this order, one table per group. An upper-case name is a
    # variable with no attribute of its own: a reader or load() uses it.
    api_key: str = setting("GEMINI_API_KEY", "", also=("GOOGLE_API_KEY",), secret=True, group=MODEL,
                           doc="Gemini Developer API key: with it the bridge talks to Gemini")
    USE_VERTEXAI = declare("GOOGLE_GENAI_USE_VERTEXAI", False, group=MODEL,
                           doc="use Vertex AI (application default credentials; needs `GOOGLE_CLOUD_PROJECT` or an "
                               "API key) instead of the Developer API")
    gcp_project: str = setting("GOOGLE_CLOUD_PROJECT", "", group=MODEL, doc="Vertex AI project")
    gcp_location: str = setting("GOOGLE_CLOUD_LOCATION", "us-central1", group=MODEL, doc="Vertex AI location")
    ECHO_MODEL = declare(
        "BRIDGE_ECHO_MODEL", False, group=MODEL,
        doc="bench only (`python -m bench.load --bridge-only`): `bench/echo_model.py` runs in place of the "
            "model_client and echoes each caller utterance itself, no Gemini, no emulator; never for real calls")
    # "gemini", "vertex" or "emulator" (no credentials); "echo" for the bench: no model at all.
    backend: str = derived("emulator", read=partial(readers.backend, echo=ECHO_MODEL, vertex=USE_VERTEXAI))
    model: str = setting("GEMINI_MODEL", "gemini-3.8-live", group=MODEL, doc="Live model id")
    voice: str = setting("GEMINI_VOICE", "Puck", persona="voice", group=MODEL, doc="prebuilt voice")
    language: str = setting("GEMINI_LANGUAGE", "en-US", persona="language", group=MODEL, doc="speech language")
    system_instruction: str = setting(
        "SYSTEM_INSTRUCTION", "You are a friendly, concise phone agent.", persona="system_instruction",
        group=MODEL, doc="the model's system instruction")
    silence_ms: int = setting("GEMINI_SILENCE_MS", 500, lo=50, hi=10_000, persona="silence_ms", group=MODEL,
                              doc="server VAD: silence that ends the caller's turn")
    start_sensitivity: str = setting(
        "GEMINI_START_SENSITIVITY", "", choices=tuple(f"START_SENSITIVITY_{s}" for s in SENSITIVITY),
        shown="service default", persona="start_sensitivity", group=MODEL,
        doc="server VAD: how readily speech is taken to start")
    end_sensitivity: str = setting(
        "GEMINI_END_SENSITIVITY", "", choices=tuple(f"END_SENSITIVITY_{s}" for s in SENSITIVITY),
        shown="service default", persona="end_sensitivity", group=MODEL,
        doc="server VAD: how readily a pause is taken to end speech")
    prefix_padding_ms: int = setting(
        "GEMINI_PREFIX_PADDING_MS", 20, lo=0, hi=10_000, persona="prefix_padding_ms", group=MODEL,
        doc="server VAD: speech needed before a start of speech is committed")
    vad_preset: str = setting(
        "GEMINI_VAD_PRESET", "", choices=("phone",), shown="none", group=MODEL,
        doc="`phone`: server VAD values for phone lines (start `LOW`, end `HIGH`, prefix padding 300 ms, "
            "silence 600 ms) for each of the four variables above left at its default")
    barge_confirm_ms: int = setting(
        "BRIDGE_BARGE_CONFIRM_MS", 400, lo=100, hi=2000, group=CONVERSATION,
        doc="the caller's speech over the model's audio must last this long to cut it off (shorter "
            "backchannels do not)")
    barge_guard_ms: int = setting(
        "BRIDGE_BARGE_GUARD_MS", 200, lo=0, hi=2000, group=CONVERSATION,
        doc="from the start of each model turn, the caller's sound does not cut the model off for this long "
            "(the line's echo settling)")
    temperature: float | None = setting("GEMINI_TEMPERATURE", None, kind=float, lo=0, hi=2,
                                        shown="service default", persona="temperature", group=MODEL,
                                        doc="sampling temperature")
    thinking: str = setting(
        "GEMINI_THINKING", "", shown="model default", group=MODEL,
        doc="a thinking budget in tokens (2.5 models: `-1`, `0` = off, up to `32768`) or level (3.1: `MINIMAL`, "
            "`LOW`, `MEDIUM`, `HIGH`); 3.8 takes none (see docs/architecture.md#model-generations)")
    proactive_audio: bool | None = setting(
        "GEMINI_PROACTIVE_AUDIO", None, kind=bool, shown="model default", group=MODEL,
        doc="let the model choose not to answer (2.5 models; always on for 3.8, which refuses `false`)")
    affective_dialog: bool | None = setting(
        "GEMINI_AFFECTIVE_DIALOG", None, kind=bool, shown="model default", group=MODEL,
        doc="let the model adapt to the caller's tone (2.5 models only: 3.1 and 3.8 refuse it)")
    vocabulary: str = setting("GEMINI_VOCABULARY", "", group=MODEL,
                              doc="comma-separated terms that bias the caller's transcription (3.8 only)")
    price_per_mtok: tuple[tuple[str, float], ...] = setting(
        "BRIDGE_PRICE_PER_MTOK", (), shown="— (no cost estimate)", read=readers.prices, group=MODEL,
        doc='token prices for the estimated cost per call, per million tokens, as JSON: '
            '`{"input_audio": 3, "output_audio": 12, "input_text": 0.5}` (keys `input_`/`output_` + a '
            "modality; tokens of a kind not listed cost nothing)")
    send_ms: float = setting(
        "GEMINI_SEND_MS", 40.0, lo=0, hi=1000, group=MODEL,
        doc="caller audio goes to Gemini at most once per this many ms (frames queued meanwhile join one "
            "chunk; the first after a pause goes at once): fewer sends cost the model_client less CPU per "
            "session, for at most this much more delay; `0` sends every frame as it comes")
    PERSONA_FILE = declare(
        "BRIDGE_PERSONA_FILE", "", group=CONVERSATION,
        doc="a TOML file that may set each variable listed here with a persona file key, by that key; the "
            "environment wins over it")
    greeting: str = setting(
        "BRIDGE_GREETING", "", persona="greeting", group=CONVERSATION,
        doc="a prompt sent when the session opens, so the model speaks first (e.g. `Greet the caller.`)")
    prewarm: bool = setting("BRIDGE_PREWARM", True, group=CONVERSATION,
                            doc="open the Gemini session at the webhook, while the phone rings")
    playback_ahead_ms: int = setting(
        "BRIDGE_PLAYBACK_AHEAD_MS", 1000, lo=200, hi=10_000, group=CONVERSATION,
        doc="how far model audio may run ahead of the caller's playback")
    transcript_dir: str = setting(
        "BRIDGE_TRANSCRIPT_DIR", "", shown="`$BRIDGE_RUN_DIR/transcripts`", read=readers.from_template,
        group=CONVERSATION, doc="per-call transcripts, `{CallSid}.jsonl`")
    dtmf_text: str = setting(
        "BRIDGE_DTMF_TEXT", "The caller pressed {digit} on the phone keypad.", read=readers.dtmf_text,
        group=CONVERSATION, doc="how a keypad digit is told to the model (must contain `{digit}`)")
    transfer_targets: tuple[str, ...] = setting(
        "BRIDGE_TRANSFER_TARGETS", (), shown="— (no `transfer_call` tool)", read=readers.transfer_targets,
        group=CONVERSATION, doc="allow-list for transfers, comma-separated: `+15550001111`, "
                                "`sip:desk@pbx.example.com`, or a prefix like `+1555*`")
    fallback_dial: str = setting(
        "BRIDGE_FALLBACK_DIAL", "", shown="— (apologise and hang up)", read=readers.fallback_dial,
        group=CONVERSATION,
        doc="a number (`+15550001111`) or `sip:` URI to `<Dial>` instead of the apology while Gemini is down")
    tools_module: str = setting("BRIDGE_TOOLS_MODULE", "", group=CONVERSATION,
                                doc="dotted path of a module whose public `async def`s become tools")
    tool_timeout_s: float = setting(
        "BRIDGE_TOOL_TIMEOUT_S", 20.0, lo=0.1, hi=3600, group=CONVERSATION,
        doc="a tool still running after this long is abandoned and the model told so (it may try again)")
    api_token: str = setting(
        "BRIDGE_API_TOKEN", "", secret=True, shown="— (`POST /calls` is off)", group=OUTBOUND,
        doc="`POST /calls` places outbound calls for requests sending `Authorization: Bearer <token>`")
    dial_allow: tuple[str, ...] = setting(
        "BRIDGE_DIAL_ALLOW", (), shown="— (nothing may be dialled)", read=readers.transfer_targets,
        group=OUTBOUND, doc="numbers `POST /calls` may dial, comma-separated: `+15550001111` or a prefix like "
                            "`+1555*`")
    dial_from: str = setting("BRIDGE_DIAL_FROM", "", read=readers.fallback_dial, group=OUTBOUND,
                             doc="caller ID of outbound calls (your Twilio number) when a request gives no `from`")
    twilio_account_sid: str = setting("TWILIO_ACCOUNT_SID", "", group=OUTBOUND,
                                      doc="Twilio Account SID: with `TWILIO_AUTH_TOKEN`, what places calls")
    hold_after_ms: int = setting(
        "BRIDGE_HOLD_AFTER_MS", 800, lo=0, hi=60_000, group=CONVERSATION,
        doc="while the model waits on a tool this long with nothing playing, the caller hears a quiet hold "
            "sound until the model speaks again")
    hold_audio: str = setting(
        "BRIDGE_HOLD_AUDIO", "", shown="a quiet chime made in code", group=CONVERSATION,
        doc="the hold sound: a WAV file, mono 16-bit PCM at 8 kHz, looped")
    idle_prompt_s: float = setting(
        "BRIDGE_IDLE_PROMPT_S", 8.0, lo=0, hi=3600, group=CONVERSATION,
        doc="the caller silent this long after the model's turn has played: the model is asked to check in "
            "(`BRIDGE_IDLE_TEXT`); `0` = never")
    idle_hangup_s: float = setting(
        "BRIDGE_IDLE_HANGUP_S", 30.0, lo=0, hi=86400, group=CONVERSATION,
        doc="the caller silent this long: the model says goodbye and the call ends; `0` = never")
    idle_text: str = setting(
        "BRIDGE_IDLE_TEXT", "(The caller has said nothing for a while. Briefly ask whether they are still "
        "there.)", group=CONVERSATION, doc="the prompt that asks the model to check in on a silent caller")
    stall_s: float = setting(
        "BRIDGE_STALL_S", 4.0, lo=0, hi=600, group=CONVERSATION,
        doc="the caller finished a turn and no model audio began this long after: nudge the model, then "
            "reconnect by handle, then apologise and end the stream (`/twiml/after`); `0` = never")
    max_call_s: float = setting(
        "BRIDGE_MAX_CALL_S", 0.0, lo=0, hi=86400, shown="`0` (off)", group=CONVERSATION,
        doc="longest call: the model warns the caller a minute before (a quarter of the time, if less), "
            "then says goodbye and the call ends (counted from the call's first stream, across faults)")
    input_pause_ms: int = setting(
        "BRIDGE_INPUT_PAUSE_MS", 1000, lo=0, hi=60_000, group=CONVERSATION,
        doc="caller audio stops arriving this long while the stream is up: Gemini is told the audio "
            "stream ended (`audio_stream_end`), so it answers what it heard; `0` = never")
    replay_s: float = setting(
        "BRIDGE_REPLAY_S", 15.0, lo=1, hi=300, group=FAULTS,
        doc="caller audio kept per call (gateway ring, model_client journal) until a resumption handle "
            "covers it, and sent again after a fault; a caller talking longer with no turn ending loses the "
            "oldest")
    reassign_wait_s: float = setting(
        "BRIDGE_REASSIGN_WAIT_S", 10.0, lo=0, hi=300, group=FAULTS,
        doc="a call whose model_client died, with no other live, waits this long for one (supervisord "
            "restarts it) before it ends")
    reconnect_max: int = setting(
        "GEMINI_RECONNECT_MAX", 5, lo=0, hi=100, group=FAULTS,
        doc="Gemini reconnects in a row (after drops, refused handles, unreachable service) before the call "
            "ends")
    reconnect_stable_s: float = setting(
        "GEMINI_RECONNECT_STABLE_S", 10.0, lo=0.1, hi=3600, group=FAULTS,
        doc="a Gemini connection up this long resets the `GEMINI_RECONNECT_MAX` count")
    handover_margin_s: float = setting(
        "GEMINI_HANDOVER_MARGIN_S", 1.0, lo=0, hi=60, group=FAULTS,
        doc="after `goAway`, switch to the new connection at once (not at a turn boundary) when this little "
            "time is left")
    redis_url: str = setting(
        "REDIS_URL", "", secret=True, shown="unset", read=readers.redis_url, group=FAULTS,
        doc="call state that must outlive a gateway (disposition, resumption handle, transcript pointer), "
            "shared by every instance: `redis://[:password@]host:6379/0`, `rediss://` or `unix://`; unset "
            "keeps it in memory")
    phone: bool = setting("BRIDGE_PHONE", False, shown="on with the emulator, else off", read=readers.phone,
                          group=DEVELOPMENT, doc="serve the browser phone at `/phone` (development)")
    twilio_api_url: str = setting(
        "TWILIO_API_URL", "https://api.twilio.com", shown="`https://api.twilio.com`", read=readers.http_url,
        group=DEVELOPMENT,
        doc="Twilio's REST API; tests point it at the local stand-in (`softphone/twilio_rest.py`)")
    emulator_host: str = setting("EMULATOR_HOST", "127.0.0.1", group=DEVELOPMENT,
                                 doc="where the emulator (used when no Gemini credentials are set) serves TLS")
    emulator_port: int = setting("EMULATOR_PORT", 8443, lo=1, hi=65535, group=DEVELOPMENT,
                                 doc="the emulator's port")
    emulator_persona: str = setting(
        "EMULATOR_PERSONA", PERSONAS[0], choices=PERSONAS, group=DEVELOPMENT,
        doc="what the emulated model says: `echo` repeats the caller, `tone` a short tone, `silent` nothing")
    emulator_goaway_after_s: float = setting(
        "EMULATOR_GOAWAY_AFTER_S", 0.0, lo=0, hi=86400, shown="`0` (off)", group=DEVELOPMENT,
        doc="send `goAway` this long into each connection, then close")
    emulator_drop_after_s: float = setting(
        "EMULATOR_DROP_AFTER_S", 0.0, lo=0, hi=86400, shown="`0` (off)", group=DEVELOPMENT,
        doc="drop each connection abruptly (no close frame) after this long")
    emulator_refuse_handles: bool = setting(
        "EMULATOR_REFUSE_HANDLES", False, group=DEVELOPMENT,
        doc="refuse every session resumption handle (close 1007), as the service does an expired one")
    emulator_refuse_key: bool = setting(
        "EMULATOR_REFUSE_KEY", False, group=DEVELOPMENT,
        doc="refuse every session's key at setup (close 1008), as the service would a bad key")
    emulator_tool_script: tuple[tuple[str, str, str], ...] = setting(
        "EMULATOR_TOOL_SCRIPT", (), read=readers.tool_script, group=DEVELOPMENT,
        doc='scripted tool calls: a JSON list of `{"when": text, "call": tool, "args": {...}}`; text input '
            "containing `when` makes the emulator call the tool, then speak its result")
    emulator_stall: str = setting(
        "EMULATOR_STALL", STALLS[0], choices=STALLS, group=DEVELOPMENT,
        doc="tests only: `no_reply`, a connection opened without a resumption handle answers nothing; "
            "`empty_turn`, each connection's first caller turn completes with no audio")


def specs() -> list[Spec]:
    """Every declared variable, in declaration order (the docs' order)."""
    attrs = {f.name: f.metadata[SPEC] for f in fields(Settings)}
    declared = (attrs.get(name, value)
                for klass in reversed(Settings.__mro__) for name, value in vars(klass).items())
    return [spec for spec in declared if isinstance(spec, Spec) and spec.env]


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Read every setting once. Pass ``env`` in tests; processes pass nothing (os.environ)."""
    persona_keys = {spec.persona: spec.env for spec in specs() if spec.persona}
    env = readers.with_persona_file(os.environ if env is None else env, Settings.PERSONA_FILE, persona_keys)
    values: dict[str, Any] = {}
    for f in fields(Settings):  # in order: a special reader may use the values read before it
        spec = f.metadata[SPEC]
        if spec.read:
            values[f.name] = spec.read(env, spec, values)
        elif spec.env:
            values[f.name] = read(env, spec)
    curve_secrets = {"server": Settings.CURVE_SERVER_SECRET, "client": Settings.CURVE_CLIENT_SECRET}
    return Settings(**values, **readers.curve_keys(env, curve_secrets, Settings.CURVE_DIR, values))


if __name__ == "__main__":  # the docs: python -m common.settings [--markdown | --readme]
    from common import setting_docs

    setting_docs.main(sys.argv[1:], specs())
