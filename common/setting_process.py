"""The settings of how the processes run and who may talk to them (the Gateway, Processes, Security and
Limits groups): the first part of ``Settings`` (common/settings.py), which declares the rest and reads them
all. Declared as there: one ``setting(...)`` each, in the order the docs list them."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from common import setting_readers as readers
from common.messages import LIVENESS
from common.setting_derived import DerivedValues
from common.setting_readers import MAX_RUN_DIR
from common.setting_types import declare, derived, setting

RESAMPLERS = ("fir", "sinc_fastest", "sinc_medium", "sinc_best")  # common/resample.py's engines
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

GATEWAY, PROCESSES, SECURITY, LIMITS = "Gateway", "Processes", "Security", "Limits"


@dataclass(frozen=True)
class ProcessSettings(DerivedValues):
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
    # A model_client costs 2-3 times a transcoder per call; two transcoders, so that one can die without a
    # gap in any call (docs/performance.md#what-a-caller-feels).
    transcoders: int = setting(
        "BRIDGE_TRANSCODERS", 0, lo=0, hi=64, read=partial(readers.process_count, cores_each=4, least=2),
        group=PROCESSES, doc="transcoder processes (supervisord `numprocs`); `0`: one per 4 cores the "
                             "container may use, at least two")
    model_clients: int = setting(
        "BRIDGE_MODEL_CLIENTS", 0, lo=0, hi=64, read=partial(readers.process_count, cores_each=2, least=1),
        group=PROCESSES, doc="model_client processes (supervisord `numprocs`); `0`: one per 2 cores the "
                             "container may use, at least one")
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
    admit_lag_ms: int = setting(
        "BRIDGE_ADMIT_LAG_MS", 200, lo=0, hi=10_000, shown="`200`; `0` = off", group=SECURITY,
        doc="refuse new calls politely (and `/readyz` 503) while any bridge process's event loop runs this "
            "many ms late (90th percentile over its last 2 s): it is full; admit again once every one is "
            "below half of it")
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
    max_ws_message: int = setting(
        "BRIDGE_MAX_WS_MESSAGE", 64 * 1024, lo=1024, hi=1024 * 1024, group=LIMITS,
        doc="largest Twilio WebSocket message in bytes; a larger one closes the stream")
    max_media_payload: int = setting(
        "BRIDGE_MAX_MEDIA_PAYLOAD", 16000, lo=160, hi=1024 * 1024, group=LIMITS,
        doc="largest decoded media payload in bytes; larger ones are dropped and counted")
    max_msg_rate: float = setting(
        "BRIDGE_MAX_MSG_RATE", 150.0, lo=1, hi=10_000, group=LIMITS,
        doc="messages per second per stream (token bucket); Twilio sends 50 media a second plus mark echoes")
    max_msg_burst: int = setting("BRIDGE_MAX_MSG_BURST", 300, lo=1, hi=100_000, group=LIMITS,
                                 doc="the token bucket's size: messages a stream may send at once")
    flood_close_s: float = setting("BRIDGE_FLOOD_CLOSE_S", 5.0, lo=0, hi=3600, group=LIMITS,
                                   doc="a flood lasting this long closes the stream")
    start_timeout_s: float = setting(
        "BRIDGE_START_TIMEOUT_S", 10.0, lo=0.1, hi=3600, group=LIMITS,
        doc="a socket with no accepted `start` this long after the upgrade is closed")
    media_timeout_s: float = setting("BRIDGE_MEDIA_TIMEOUT_S", 60.0, lo=0, hi=86400, group=LIMITS,
                                     doc="a call with no media this long is closed (`0` = never)")
