"""Settings: read once from the environment into one frozen object, passed down.

Each variable is declared once, below: name, type, default, bounds or choices, description, group.
``load()`` reads them all, the README's configuration tables and ``python -m common.settings``
(``--markdown``) are generated from the same declarations. No other module reads ``os.environ``; a
malformed or out-of-range value is a ``SettingsError`` naming the variable.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, fields
from functools import partial
from typing import Any, Mapping
from urllib.parse import urlsplit

from common import setting_readers as readers
from common.messages import LIVENESS
from common.setting_readers import MAX_RUN_DIR
from common.setting_types import SPEC, SettingsError, Spec, declare, derived, read, setting  # noqa: F401

RESAMPLERS = ("fir", "sinc_fastest", "sinc_medium", "sinc_best")  # common/resample.py's engines
PERSONAS = ("echo", "tone", "silent")  # emulator/persona.py
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
SENSITIVITY = ("HIGH", "LOW")

GATEWAY, PROCESSES, SECURITY, MODEL = "Gateway", "Processes", "Security", "Model"
CONVERSATION, FAULTS, DEVELOPMENT = "Conversation", "Faults", "Development"


@dataclass(frozen=True)
class Settings:
    # The documentation lists the variables in this order, one table per group. An upper-case name is a
    # variable with no attribute of its own: a reader or load() uses it.
    port: int = setting("PORT", 8080, lo=1, hi=65535, group=GATEWAY, doc="gateway HTTP port")
    host: str = setting("HOST", "0.0.0.0", group=GATEWAY, doc="gateway bind address")
    public_url: str = setting(
        "PUBLIC_URL", "", shown="`http://127.0.0.1:$PORT`", read=readers.http_url, group=GATEWAY,
        doc="the URL Twilio reaches the gateway at; `https://` gives a `wss://` stream URL")
    drain_s: float = setting(
        "BRIDGE_DRAIN_S", 5.0, lo=0, hi=3600, group=GATEWAY,
        doc="on SIGTERM the gateway refuses new calls (`/readyz` says 503) and lets live calls run this long "
            "before ending them; supervisord waits this plus 7 s")
    metrics_token: str = setting(
        "BRIDGE_METRICS_TOKEN", "", secret=True, group=GATEWAY,
        doc="`/metrics` answers loopback peers; with this set, also anyone sending "
            "`Authorization: Bearer <token>` (a Prometheus elsewhere)")
    transcoders: int = setting("BRIDGE_TRANSCODERS", 2, lo=1, hi=64, group=PROCESSES,
                               doc="transcoder processes (supervisord `numprocs`)")
    model_clients: int = setting("BRIDGE_MODEL_CLIENTS", 1, lo=1, hi=64, group=PROCESSES,
                                 doc="model_client processes (supervisord `numprocs`)")
    process_num: int = setting("PROCESS_NUM", 0, lo=0, hi=63, group=PROCESSES,
                               doc="set by supervisord for each of `numprocs` copies")
    run_dir: str = setting(
        "BRIDGE_RUN_DIR", "", shown="`$TMPDIR/gemini-bridge-$UID`", read=readers.run_dir, group=PROCESSES,
        doc=f"ipc sockets, emulator certificate, supervisord files (mode 0700; at most {MAX_RUN_DIR} "
            "characters)")
    gateway_endpoint: str = setting(
        "GATEWAY_ENDPOINT", "", shown="`ipc://$BRIDGE_RUN_DIR/gateway.ipc`", read=readers.endpoint,
        group=PROCESSES, doc="the gateway's directory ROUTER (`tcp://host:port` across hosts)")
    model_client_endpoint: str = setting(
        "MODEL_CLIENT_ENDPOINT", "", shown="`ipc://$BRIDGE_RUN_DIR/model_client-{n}.ipc`",
        read=readers.endpoint, group=PROCESSES, doc="each model_client's ROUTER; `{n}` is its process number")
    heartbeat_s: float = setting("BRIDGE_HEARTBEAT_S", 1.0, lo=0.05, hi=60, group=PROCESSES,
                                 doc=f"heartbeat interval; a peer silent for {LIVENESS} intervals is dead")
    resampler: str = setting(
        "BRIDGE_RESAMPLER", RESAMPLERS[0], choices=RESAMPLERS, group=PROCESSES,
        doc="transcoder resampling engine: `fir` (polyphase FIR for the telephone band) or libsamplerate's "
            "converters (for comparison or as a fallback)")
    log_level: str = setting("LOG_LEVEL", "INFO", choices=LOG_LEVELS, group=PROCESSES, doc="log level")
    log_format: str = setting(
        "LOG_FORMAT", "text", choices=("text", "json"), group=PROCESSES,
        doc="`json` for one JSON object per line; either way a line about a call names its call id, "
            "CallSid and StreamSid (`-` until Twilio's `start`)")
    twilio_auth_token: str = setting(
        "TWILIO_AUTH_TOKEN", "", secret=True, group=SECURITY,
        doc="Twilio Auth Token: every request under `/twiml` must carry a valid `X-Twilio-Signature`; "
            "without it only loopback peers are served")
    bridge_secret: str = setting(
        "BRIDGE_SECRET", "", secret=True, shown="random per process", group=SECURITY,
        doc="key of the per-call stream tokens; set the same value on every gateway behind one load balancer")
    insecure_dev: bool = setting(
        "BRIDGE_INSECURE_DEV", False, group=SECURITY,
        doc="with no `TWILIO_AUTH_TOKEN`, serve non-loopback peers anyway, and allow `tcp://` endpoints "
            "without CURVE keys (development only; logged as `INSECURE` at start)")
    upgrade_signature: str = setting(
        "BRIDGE_UPGRADE_SIGNATURE", "enforce", choices=("off", "log", "enforce"), group=SECURITY,
        doc="with `TWILIO_AUTH_TOKEN` set, the WebSocket upgrade must carry a valid `X-Twilio-Signature` "
            "over `wss://` + `PUBLIC_URL`'s host and path + the path and query as received, else 403; `log` "
            "lets it through with a log line (a proxy that rewrites the URL); `off` skips the check")
    max_calls: int = setting(
        "BRIDGE_MAX_CALLS", 0, lo=0, hi=100_000, group=SECURITY,
        doc="concurrent calls; `0` = what the live transcoders and model_clients advertise (the smaller "
            "total), never more")
    max_ws_message: int = setting(
        "BRIDGE_MAX_WS_MESSAGE", 64 * 1024, lo=1024, hi=1024 * 1024, group=SECURITY,
        doc="largest Twilio WebSocket message in bytes; a larger one closes the stream")
    max_media_payload: int = setting(
        "BRIDGE_MAX_MEDIA_PAYLOAD", 16000, lo=160, hi=1024 * 1024, group=SECURITY,
        doc="largest decoded media payload in bytes; larger ones are dropped and counted")
    max_msg_rate: float = setting(
        "BRIDGE_MAX_MSG_RATE", 150.0, lo=1, hi=10_000, group=SECURITY,
        doc="messages per second per stream (token bucket); Twilio sends 50 media a second plus mark echoes")
    max_msg_burst: int = setting("BRIDGE_MAX_MSG_BURST", 300, lo=1, hi=100_000, group=SECURITY,
                                 doc="the token bucket's size: messages a stream may send at once")
    flood_close_s: float = setting("BRIDGE_FLOOD_CLOSE_S", 5.0, lo=0, hi=3600, group=SECURITY,
                                   doc="a flood lasting this long closes the stream")
    start_timeout_s: float = setting(
        "BRIDGE_START_TIMEOUT_S", 10.0, lo=0.1, hi=3600, group=SECURITY,
        doc="a socket with no accepted `start` this long after the upgrade is closed")
    media_timeout_s: float = setting("BRIDGE_MEDIA_TIMEOUT_S", 60.0, lo=0, hi=86400, group=SECURITY,
                                     doc="a call with no media this long is closed (`0` = never)")
    CURVE_SERVER_SECRET = declare("BRIDGE_CURVE_SERVER_SECRET", "", secret=True, group=SECURITY,
                                  doc="Z85 CURVE secret key of the bound `tcp://` sockets (ROUTERs)")
    CURVE_CLIENT_SECRET = declare("BRIDGE_CURVE_CLIENT_SECRET", "", secret=True, group=SECURITY,
                                  doc="Z85 CURVE secret key of the connecting `tcp://` sockets (DEALERs)")
    CURVE_DIR = declare(
        "BRIDGE_CURVE_DIR", "", group=SECURITY,
        doc="directory of `server.key[_secret]` and `client.key[_secret]` (`python -m common.curve DIR`); "
            "secret files must be 0600; the two variables above win. A `tcp://` endpoint without keys is "
            "refused unless `BRIDGE_INSECURE_DEV=true`")
    curve_server_public: str = derived("")  # Z85 keys, from the three variables above (readers.curve_keys)
    curve_server_secret: str = derived("", secret=True)
    curve_client_public: str = derived("")
    curve_client_secret: str = derived("", secret=True)
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

    @property
    def emulator_base_url(self) -> str:
        return f"https://{self.emulator_host}:{self.emulator_port}"

    emulator_cert = property(lambda self: os.path.join(self.run_dir, "emulator-cert.pem"))
    emulator_key = property(lambda self: os.path.join(self.run_dir, "emulator-key.pem"))

    def transfer_allowed(self, target: str) -> bool:
        """Is ``target`` on the transfer allow-list (exact, or a prefix entry ending in ``*``)?"""
        return any(target == t or (t.endswith("*") and target.startswith(t[:-1]) and target[len(t) - 1:]
                                   .lstrip("+").isdigit()) for t in self.transfer_targets)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values that must never appear in a log line (common/logs.py masks them): the secret settings,
        and the Redis URL's password on its own."""
        values = [getattr(self, f.name) for f in fields(self) if f.metadata[SPEC].secret]
        return tuple(v for v in (*values, urlsplit(self.redis_url).password) if v)

    def model_client_endpoint_for(self, n: int) -> str:
        return self.model_client_endpoint.format(n=n)

    @property
    def stream_url(self) -> str:
        """The Twilio stream URL: wss:// behind https (as Twilio requires), ws:// for local http."""
        scheme, rest = self.public_url.split("://", 1)
        return ("wss" if scheme == "https" else "ws") + "://" + rest.rstrip("/") + "/ws/twilio"


def specs() -> list[Spec]:
    """Every declared variable, in declaration order (the docs' order)."""
    attrs = {f.name: f.metadata[SPEC] for f in fields(Settings)}
    declared = (attrs.get(name, value) for name, value in vars(Settings).items())
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
