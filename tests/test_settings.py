"""Settings are read once; a malformed value names its variable; secrets stay out of repr."""

import pytest

from common.settings import SettingsError, load


def test_defaults_use_the_emulator():
    s = load({})
    assert (s.backend, s.port, s.public_url) == ("emulator", 8080, "http://127.0.0.1:8080")
    assert s.stream_url == "ws://127.0.0.1:8080/ws/twilio"
    assert s.model_client_endpoint_for(3).endswith("/model_client-3.ipc")


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
    ({"PORT": "0"}, "PORT must be >= 1"),
    ({"PUBLIC_URL": "ftp://x"}, "PUBLIC_URL must start with http"),
    ({"GATEWAY_ENDPOINT": "udp://x"}, "GATEWAY_ENDPOINT must be an ipc:// or tcp://"),
    ({"BRIDGE_HEARTBEAT_S": "-1"}, "BRIDGE_HEARTBEAT_S must be >= 0"),
    ({"BRIDGE_TRANSCODERS": "0"}, "BRIDGE_TRANSCODERS must be >= 1"),
    ({"GOOGLE_GENAI_USE_VERTEXAI": "maybe"}, "GOOGLE_GENAI_USE_VERTEXAI must be true or false"),
    ({"GOOGLE_GENAI_USE_VERTEXAI": "1"}, "needs GOOGLE_CLOUD_PROJECT"),
    ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL must be"),
    ({"EMULATOR_PERSONA": "pirate"}, "EMULATOR_PERSONA must be"),
    ({"BRIDGE_RUN_DIR": "/" + "x" * 120}, "BRIDGE_RUN_DIR is too long"),
])
def test_malformed_values_name_the_variable(env, message):
    with pytest.raises(SettingsError, match=message):
        load(env)


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
    ('end_sensitivity = "LOUD"\n', "GEMINI_END_SENSITIVITY must be one of"),
])
def test_bad_persona_file_is_a_clear_error(tmp_path, content, message):
    persona = tmp_path / "persona.toml"
    persona.write_text(content)
    with pytest.raises(SettingsError, match=message):
        load({"BRIDGE_PERSONA_FILE": str(persona)})


@pytest.mark.parametrize("env, message", [
    ({"BRIDGE_DTMF_TEXT": "pressed"}, "must contain {digit}"),
    ({"BRIDGE_TRANSFER_TARGETS": "+1555, desk"}, "'desk' is not a phone number"),
    ({"GEMINI_TEMPERATURE": "3"}, "between 0 and 2"),
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


def test_every_variable_is_documented_in_the_readme():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    source = (root / "common" / "settings.py").read_text()
    readme = (root / "README.md").read_text()
    names = {n for n in re.findall(r'"([A-Z][A-Z0-9_]{3,})"', source) if "SENSITIVITY_" not in n}
    assert sorted(n for n in names if f"`{n}`" not in readme) == []
