"""Settings are declared once and read once; a malformed or out-of-range value names its variable;
secrets stay out of repr; the README's configuration tables are the declarations' own."""

import dataclasses
import difflib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common import setting_docs, setting_readers
from common.setting_types import SPEC
from common.settings import PERSONAS, RESAMPLERS, Settings, SettingsError, load, specs

ROOT = Path(__file__).resolve().parents[1]
# What some variables need beside them to be read at all.
NEEDS = {"GOOGLE_GENAI_USE_VERTEXAI": {"GOOGLE_CLOUD_PROJECT": "p"}}


def test_defaults_use_the_emulator():
    s = load({})
    assert (s.backend, s.port, s.public_url) == ("emulator", 8080, "http://127.0.0.1:8080")
    assert s.stream_url == "ws://127.0.0.1:8080/ws/twilio"
    assert s.model_client_endpoint_for(3).endswith("/model_client-3.ipc")
    assert s.gateway_endpoint == f"ipc://{s.run_dir}/gateway.ipc"
    assert s.transcript_dir == os.path.join(s.run_dir, "transcripts")


def test_derived_defaults_follow_what_they_derive_from():
    s = load({"PORT": "9123", "BRIDGE_RUN_DIR": "/tmp/b"})
    assert (s.public_url, s.gateway_endpoint, s.transcript_dir) == (
        "http://127.0.0.1:9123", "ipc:///tmp/b/gateway.ipc", "/tmp/b/transcripts")


@pytest.mark.parametrize("env, backend", [
    ({"GEMINI_API_KEY": "k"}, "gemini"),
    ({"GOOGLE_API_KEY": "k"}, "gemini"),
    ({"GOOGLE_GENAI_USE_VERTEXAI": "true", "GOOGLE_CLOUD_PROJECT": "p"}, "vertex"),
    ({"GOOGLE_GENAI_USE_VERTEXAI": "false"}, "emulator"),
    ({"BRIDGE_ECHO_MODEL": "true", "GEMINI_API_KEY": "k"}, "echo"),  # the bench's switch wins
])
def test_backend_follows_credentials(env, backend):
    assert load(env).backend == backend


def test_public_https_url_gives_a_wss_stream():
    assert load({"PUBLIC_URL": "https://bridge.example.com/"}).stream_url == \
        "wss://bridge.example.com/ws/twilio"


def test_api_key_never_in_repr():
    assert "sekrit" not in repr(load({"GEMINI_API_KEY": "sekrit"}))


@pytest.mark.parametrize("env, message", [
    ({"PORT": "x"}, "PORT must be an integer"),
    ({"PORT": "0"}, "PORT must be >= 1 and <= 65535, got 0"),
    ({"PORT": "80000"}, "PORT must be >= 1 and <= 65535, got 80000"),
    ({"EMULATOR_PORT": "65536"}, "EMULATOR_PORT must be >= 1 and <= 65535"),
    ({"BRIDGE_HEARTBEAT_S": "nan"}, "BRIDGE_HEARTBEAT_S must be a number"),
    ({"BRIDGE_HEARTBEAT_S": "0"}, "BRIDGE_HEARTBEAT_S must be >= 0.05 and <= 60, got 0"),
    ({"BRIDGE_HEARTBEAT_S": "1e9"}, "BRIDGE_HEARTBEAT_S must be >= 0.05 and <= 60"),
    ({"PUBLIC_URL": "ftp://x"}, "PUBLIC_URL must start with http:// or https://"),
    ({"GATEWAY_ENDPOINT": "udp://x"}, "GATEWAY_ENDPOINT must start with ipc:// or tcp://"),
    ({"BRIDGE_TRANSCODERS": "-1"}, "BRIDGE_TRANSCODERS must be >= 0"),
    ({"GOOGLE_GENAI_USE_VERTEXAI": "maybe"}, "GOOGLE_GENAI_USE_VERTEXAI must be true or false"),
    ({"GOOGLE_GENAI_USE_VERTEXAI": "1"}, "needs GOOGLE_CLOUD_PROJECT"),
    ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got 'LOUD'"),
    ({"EMULATOR_PERSONA": "pirate"}, "EMULATOR_PERSONA must be echo, tone or silent"),
    ({"BRIDGE_RESAMPLER": "linear"}, "BRIDGE_RESAMPLER must be fir, sinc_fastest, sinc_medium or sinc_best"),
    ({"BRIDGE_RUN_DIR": "/" + "x" * 120}, "BRIDGE_RUN_DIR is too long"),
    ({"REDIS_URL": "http://:pw-secret@redis:6379"}, r"REDIS_URL must be redis://, rediss:// or unix:// \(got"),
])
def test_malformed_values_name_the_variable(env, message):
    with pytest.raises(SettingsError, match=message) as raised:
        load(env)
    assert "pw-secret" not in str(raised.value)


def test_choices_take_any_case_and_keep_the_declared_spelling():
    s = load({"LOG_LEVEL": "debug", "LOG_FORMAT": "JSON", "GEMINI_START_SENSITIVITY": "start_sensitivity_low"})
    assert (s.log_level, s.log_format, s.start_sensitivity) == ("DEBUG", "json", "START_SENSITIVITY_LOW")


# --- every declared variable, checked the same way --------------------------------------------------

BOUNDED = [s for s in specs() if s.lo is not None]
BOOLEANS = [s for s in specs() if s.kind is bool]


def test_every_number_is_bounded_and_its_default_within():
    numbers = [s for s in specs() if s.kind in (int, float)]
    assert numbers and all(s.lo is not None and s.hi is not None for s in numbers)
    assert all(s.default is None or s.lo <= s.default <= s.hi for s in numbers)


@pytest.mark.parametrize("affinity, cpu_max, cores", [
    (4, "max 100000", 4), (64, "200000 100000", 2), (64, "150000 100000", 2), (2, "50000 100000", 1),
    (8, "", 8), (8, "not a quota", 8)])
def test_cores_are_the_affinity_capped_by_the_cgroup_quota(affinity, cpu_max, cores):
    assert setting_readers.cores_allowed(affinity, cpu_max) == cores


@pytest.mark.parametrize("cores, transcoders, model_clients", [(1, 2, 1), (2, 2, 1), (4, 2, 2), (8, 2, 4),
                                                                (16, 4, 8)])
def test_process_counts_follow_the_cores_unless_set(monkeypatch, cores, transcoders, model_clients):
    monkeypatch.setattr(setting_readers, "usable_cores", lambda: cores)
    config = load({})
    assert (config.transcoders, config.model_clients) == (transcoders, model_clients)
    chosen = load({"BRIDGE_TRANSCODERS": "1", "BRIDGE_MODEL_CLIENTS": "3"})
    assert chosen.transcoders == 1
    assert chosen.model_clients == 3


@pytest.mark.parametrize("spec", BOUNDED, ids=lambda s: s.env)
def test_every_bound_is_checked_at_load(spec):
    step = 1 if spec.kind is int else 0.01
    for outside in (spec.lo - step, spec.hi + step, spec.hi * 1000 + 1):
        with pytest.raises(SettingsError, match=f"^{spec.env} must be >= "):
            load({spec.env: str(outside)})
    for inside in (spec.lo, spec.hi):
        load({spec.env: str(inside)})


@pytest.mark.parametrize("spec", BOOLEANS, ids=lambda s: s.env)
def test_every_boolean_takes_only_true_false_1_0_yes_no(spec):
    env = NEEDS.get(spec.env, {})
    for text in ("true", "FALSE", "1", "0", "Yes", "no", " "):
        load({**env, spec.env: text})
    for text in ("maybe", "on", "off", "2", "y"):
        with pytest.raises(SettingsError, match=f"^{spec.env} must be true or false"):
            load({**env, spec.env: text})


@pytest.mark.parametrize("text, prewarm", [("", True), ("false", False), ("no", False), ("0", False),
                                           ("YES", True)])
def test_prewarm_goes_through_the_boolean_parser(text, prewarm):
    assert load({"BRIDGE_PREWARM": text}).prewarm is prewarm


def test_declarations_are_complete_and_unique():
    names = [n for s in specs() for n in (s.env, *s.also)]
    assert len(names) == len(set(names)), "a variable is declared twice"
    for f in dataclasses.fields(Settings):
        spec = f.metadata[SPEC]
        assert f.repr is not spec.secret, f.name
        assert spec.persona in ("", f.name), "a persona file key is the attribute's name"
        assert spec.env or f.name == "backend" or f.name.startswith("curve_"), f"{f.name} has no variable"


def test_the_home_modules_serve_every_declared_choice():
    from emulator import persona
    from common import resample

    assert resample.ENGINES == RESAMPLERS and resample.DEFAULT_ENGINE == Settings.resampler
    for engine in RESAMPLERS:
        assert resample.make("up_8k_to_16k", engine).rate_out == 16000
    for name in PERSONAS:
        persona.reply(name, bytes(3200))  # an unknown persona raises ValueError


# --- persona file ---------------------------------------------------------------------------------

def test_persona_file_sets_defaults_and_the_environment_wins(tmp_path):
    persona = tmp_path / "persona.toml"
    persona.write_text('system_instruction = "You book dentist appointments."\nvoice = "Kore"\n'
                       'silence_ms = 700\nstart_sensitivity = "START_SENSITIVITY_LOW"\ntemperature = 0.4\n')
    s = load({"BRIDGE_PERSONA_FILE": str(persona), "GEMINI_VOICE": "Puck"})
    assert (s.system_instruction, s.voice, s.silence_ms) == ("You book dentist appointments.", "Puck", 700)
    assert (s.start_sensitivity, s.temperature) == ("START_SENSITIVITY_LOW", 0.4)


@pytest.mark.parametrize("content, message", [
    ('voice = "Kore"\nmood = 3\n', r"unknown keys \['mood'\]"),
    ("not toml at all [", "cannot be read"),
    ('silence_ms = "soon"\n', "GEMINI_SILENCE_MS must be an integer"),
    ("silence_ms = 10\n", "GEMINI_SILENCE_MS must be >= 50"),
    ('end_sensitivity = "LOUD"\n', "GEMINI_END_SENSITIVITY must be END_SENSITIVITY_HIGH or END_SENSITIVITY_LOW"),
])
def test_bad_persona_file_is_a_clear_error(tmp_path, content, message):
    persona = tmp_path / "persona.toml"
    persona.write_text(content)
    with pytest.raises(SettingsError, match=message):
        load({"BRIDGE_PERSONA_FILE": str(persona)})


@pytest.mark.parametrize("env, message", [
    ({"BRIDGE_DTMF_TEXT": "pressed"}, "must contain {digit}"),
    ({"BRIDGE_TRANSFER_TARGETS": "+1555, desk"}, "'desk' is not a phone number"),
    ({"GEMINI_TEMPERATURE": "3"}, "GEMINI_TEMPERATURE must be >= 0 and <= 2, got 3"),
    ({"EMULATOR_TOOL_SCRIPT": "[{}]"}, "EMULATOR_TOOL_SCRIPT must be a JSON list"),
    ({"BRIDGE_PLAYBACK_AHEAD_MS": "50"}, "BRIDGE_PLAYBACK_AHEAD_MS must be >= 200"),
])
def test_conversation_settings_are_validated(env, message):
    with pytest.raises(SettingsError, match=message):
        load(env)


@pytest.mark.parametrize("target, allowed", [
    ("+15551234567", True), ("+1555", False), ("+16505550000", False), ("sip:desk@pbx.example.com", True),
    ("sip:other@pbx.example.com", False), ("+1555123x", False),
])
def test_transfer_allow_list(target, allowed):
    s = load({"BRIDGE_TRANSFER_TARGETS": "+1555*, sip:desk@pbx.example.com"})
    assert s.transfer_allowed(target) is allowed


# --- the docs, generated -----------------------------------------------------------------------------

@pytest.mark.parametrize("path", list(setting_docs.tables(specs())), ids=lambda p: p.name)
def test_the_configuration_tables_are_the_generated_ones(path):
    text = path.read_text()
    assert text.count(setting_docs.BEGIN) == 1 and text.count(setting_docs.END) == 1, "markers lost"
    expected = setting_docs.with_table(text, setting_docs.tables(specs())[path])
    diff = "\n".join(difflib.unified_diff(text.splitlines(), expected.splitlines(), path.name,
                                          "python -m common.settings --readme", lineterm=""))
    assert not diff, f"{path.name}'s configuration is stale: run `python -m common.settings --readme`\n{diff}"


def test_the_readme_leaves_only_the_development_knobs_to_the_reference():
    readme, reference = (setting_docs.tables(specs())[p] for p in (setting_docs.README, setting_docs.REFERENCE))
    for spec in specs():
        assert f"| `{spec.env}`" in reference, spec.env
        assert (f"| `{spec.env}`" in readme) == (spec.group not in setting_docs.NOT_IN_README), spec.env


def test_the_table_goes_between_the_markers_only():
    readme = f"# x\n\n{setting_docs.BEGIN}\nold\n{setting_docs.END}\n\n## next\n"
    assert setting_docs.with_table(readme, "| new |\n") == \
        f"# x\n\n{setting_docs.BEGIN}\n| new |\n{setting_docs.END}\n\n## next\n"
    with pytest.raises(ValueError, match="no <!-- settings:begin"):
        setting_docs.with_table("# no markers\n", "| new |\n")


def test_each_variable_is_documented_once_with_its_range():
    text = setting_docs.markdown(specs())
    for spec in specs():
        assert text.count(f"| `{spec.env}`") == 1, spec.env
        assert "|" not in spec.doc + spec.shown, f"{spec.env}: a | would split its table row"
    assert "| **Gateway** | `PORT` | `8080` | 1–65535 | gateway HTTP port |\n|  | `HOST` |" in text
    assert "| **Model** | `GEMINI_API_KEY` or `GOOGLE_API_KEY` | — |  | " in text
    assert "| `BRIDGE_PREWARM` | `true` | `true`/`false`, `1`/`0`, `yes`/`no` |" in text


def test_help_lists_every_variable_by_group(capsys):
    setting_docs.main([], specs())
    out = capsys.readouterr().out
    assert "  PORT (default 8080; 1..65535)\n      gateway HTTP port\n" in out
    assert "\nSecurity:\n  TWILIO_AUTH_TOKEN (default —)\n" in out and "`" not in out
    for spec in specs():
        assert out.count(f"\n  {spec.env} ") == 1, spec.env
    setting_docs.main(["--markdown"], specs())
    assert capsys.readouterr().out == setting_docs.markdown(specs())


# --- processes stop at start, with one line naming the variable --------------------------------------

def run_module(module: str, tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    base = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "BRIDGE_RUN_DIR": str(tmp_path / "run")}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env={**base, **env},
                          capture_output=True, text=True, timeout=60)


def test_python_m_common_settings_prints_the_docs(tmp_path):
    result = run_module("common.settings", tmp_path, "--markdown")
    assert (result.returncode, result.stderr, result.stdout) == (0, "", setting_docs.markdown(specs()))


def test_the_stack_refuses_a_port_out_of_range(tmp_path):
    result = run_module("common.stack", tmp_path, PORT="80000")
    assert result.returncode != 0
    assert result.stderr.strip() == "configuration error: PORT must be >= 1 and <= 65535, got 80000"


@pytest.mark.parametrize("module", ["transcoder", "gateway"])
def test_a_stage_refuses_a_bad_setting_in_one_line(tmp_path, module):
    result = run_module(module, tmp_path, BRIDGE_HEARTBEAT_S="0", BRIDGE_PREWARM="maybe")
    assert result.returncode == 2
    assert result.stderr.strip() == f"{module}: configuration error: BRIDGE_HEARTBEAT_S must be >= 0.05 " \
                                    "and <= 60, got 0"
