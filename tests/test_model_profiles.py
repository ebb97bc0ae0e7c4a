"""Model profiles (common/model_profiles.py): each model id gets its generation's rules, the session
config is built from them (as the real SDK sends it), and a setting the model refuses stops the process
at start, naming the setting and the model."""

import re
import subprocess
import sys

import pytest
from google.genai import _common, _live_converters, types

from common import model_profiles as mp
from common.settings import SettingsError, load
from harness.stack import clean_env
from model_client.backend_check import open_and_close
from model_client.config import live_config, make_client
from model_client.tools import Toolbox

V38, V31 = "gemini-3.8-live", "gemini-3.1-flash-live-preview"
V25, V25_09 = "gemini-2.5-flash-native-audio-preview-12-2025", "gemini-2.5-flash-native-audio-preview-09-2025"
VERTEX25 = "gemini-live-2.5-flash-native-audio"


@pytest.mark.parametrize("model, profile", [
    (V38, mp.GEMINI_3_8), ("models/gemini-3.8-live", mp.GEMINI_3_8), ("gemini-3.8-live-2027-01", mp.GEMINI_3_8),
    (V31, mp.GEMINI_3_1), (V25, mp.GEMINI_2_5), (V25_09, mp.GEMINI_2_5),
    (VERTEX25, mp.VERTEX_2_5), ("gemini-live-2.5-flash-preview-native-audio-09-2025", mp.VERTEX_2_5),
    ("publishers/google/models/gemini-live-2.5-flash-native-audio", mp.VERTEX_2_5),
])
def test_model_ids_and_patterns_find_their_profile(model, profile):
    assert mp.lookup(model) == profile


@pytest.mark.parametrize("model, default, behaviors, scheduling, thinking", [
    (V38, "NON_BLOCKING", ("BLOCKING", "NON_BLOCKING"), True, "none"),
    (V31, "BLOCKING", ("BLOCKING",), False, "level"),
    (V25, "BLOCKING", ("BLOCKING", "NON_BLOCKING"), True, "budget"),
    (VERTEX25, "BLOCKING", ("BLOCKING",), False, "budget"),
    ("gemini-9-live", "BLOCKING", ("BLOCKING",), False, "none"),
])
def test_what_each_generation_takes(model, default, behaviors, scheduling, thinking):
    p = mp.lookup(model)
    assert (p.default_behavior, p.behaviors, p.scheduling, p.thinking) == (default, behaviors, scheduling, thinking)
    assert bool(p.interrupt) == p.scheduling  # INTERRUPT's meaning is documented where it exists


def test_an_unknown_model_gets_a_conservative_profile_and_one_warning():
    profile, warnings = mp.check(load({"GEMINI_MODEL": "gemini-9-live"}))
    assert not profile.known and profile.name == "gemini-9-live"
    assert len(warnings) == 1 and "gemini-9-live is not one the bridge knows" in warnings[0]
    assert mp.check(load({}))[1] == []


def test_a_model_on_the_other_platform_is_warned_about():
    _, warnings = mp.check(load({"GEMINI_MODEL": VERTEX25, "GEMINI_API_KEY": "k"}))
    assert warnings and "documented for vertex, not gemini" in warnings[0]


ACCEPTED = [
    (V38, {}), (V38, {"GEMINI_PROACTIVE_AUDIO": "true"}), (V38, {"GEMINI_VOCABULARY": "Acme, SKU-42"}),
    (V31, {"GEMINI_THINKING": "low"}), (V25, {"GEMINI_THINKING": "1024"}), (V25, {"GEMINI_THINKING": "-1"}),
    (V25, {"GEMINI_PROACTIVE_AUDIO": "false", "GEMINI_AFFECTIVE_DIALOG": "true"}),
    (VERTEX25, {"GEMINI_AFFECTIVE_DIALOG": "true"}),
]
REFUSED = [
    (V38, {"GEMINI_THINKING": "1024"}, "GEMINI_THINKING='1024': model gemini-3.8-live takes no thinking"),
    (V38, {"GEMINI_PROACTIVE_AUDIO": "false"}, "GEMINI_PROACTIVE_AUDIO=false: model gemini-3.8-live has it always on"),
    (V38, {"GEMINI_AFFECTIVE_DIALOG": "true"}, "GEMINI_AFFECTIVE_DIALOG=true: model gemini-3.8-live does not take it"),
    (V31, {"GEMINI_THINKING": "1024"}, "model gemini-3.1-flash-live-preview takes a thinking level"),
    (V31, {"GEMINI_PROACTIVE_AUDIO": "true"}, "GEMINI_PROACTIVE_AUDIO=true: model gemini-3.1-flash-live-preview"),
    (V31, {"GEMINI_AFFECTIVE_DIALOG": "false"}, "GEMINI_AFFECTIVE_DIALOG=false: model gemini-3.1"),
    (V31, {"GEMINI_VOCABULARY": "Acme"}, "GEMINI_VOCABULARY: model gemini-3.1-flash-live-preview"),
    (V25, {"GEMINI_THINKING": "HIGH"}, "model gemini-2.5-flash-native-audio-preview takes a thinking budget"),
    (V25, {"GEMINI_THINKING": "99999"}, "thinking budget"),
    (V25, {"GEMINI_VOCABULARY": "Acme"}, "GEMINI_VOCABULARY"),
    ("gemini-9-live", {"GEMINI_AFFECTIVE_DIALOG": "true"},
     "GEMINI_AFFECTIVE_DIALOG=true: model gemini-9-live (not one the bridge knows) does not take it"),
    ("gemini-9-live", {"GEMINI_THINKING": "LOW"}, "model gemini-9-live (not one the bridge knows) takes no thinking"),
    ("gemini-2.0-flash-live-001", {}, "GEMINI_MODEL=gemini-2.0-flash-live-001: this model was shut down"),
]


@pytest.mark.parametrize("model, env", ACCEPTED)
def test_settings_the_model_takes_are_accepted(model, env):
    profile, _ = mp.check(load({"GEMINI_MODEL": model, **env}))
    live_config(load({"GEMINI_MODEL": model, **env}))  # and the SDK takes the config


@pytest.mark.parametrize("model, env, message", REFUSED)
def test_settings_the_model_refuses_stop_the_process_naming_both(model, env, message):
    with pytest.raises(SettingsError, match=re.escape(message)):
        mp.check(load({"GEMINI_MODEL": model, **env}))


def wire_setup(model: str, env: dict) -> dict:
    """The setup message the SDK sends for this config (its own converter, as live.connect uses it)."""
    settings = load({"GEMINI_MODEL": model, "GEMINI_API_KEY": "k", **env})
    client = make_client(settings)
    try:
        config = live_config(settings, tools=Toolbox(profile=mp.lookup(model)).config())
        params = types.LiveConnectParameters(model=model, config=config).model_dump(exclude_none=True)
        return _common.convert_to_dict(_live_converters._LiveConnectParameters_to_mldev(
            api_client=client._api_client, from_object=params))["setup"]
    finally:
        client.close()


@pytest.mark.parametrize("model, env, present, absent", [
    (V38, {"GEMINI_VOCABULARY": "Acme, SKU-42"},
     {"inputAudioTranscription": {"custom_vocabulary": ["Acme", "SKU-42"]}},
     ("thinkingConfig", "proactivity", "enableAffectiveDialog", "behavior")),
    (V38, {"GEMINI_PROACTIVE_AUDIO": "true"}, {}, ("proactivity",)),  # always on: nothing to send
    (V31, {"GEMINI_THINKING": "minimal"}, {"generationConfig": {"thinkingConfig": {"thinking_level": "MINIMAL"}}},
     ("proactivity", "thinking_budget")),
    (V25, {"GEMINI_THINKING": "0", "GEMINI_PROACTIVE_AUDIO": "true", "GEMINI_AFFECTIVE_DIALOG": "true"},
     {"generationConfig": {"thinkingConfig": {"thinking_budget": 0}, "enableAffectiveDialog": True},
      "proactivity": {"proactive_audio": True}}, ("custom_vocabulary",)),
    (V25, {}, {}, ("thinkingConfig", "proactivity", "enableAffectiveDialog")),  # unset: the model's default
])
def test_the_session_config_is_built_from_the_profile(model, env, present, absent):
    setup = wire_setup(model, env)
    for key, value in present.items():
        for inner, expected in value.items():
            assert setup[key][inner] == expected, setup[key]
    for key in absent:
        assert key not in repr(setup), setup


@pytest.mark.parametrize("module, code", [("common.stack", 1), ("model_client", 2)])
def test_make_run_and_the_model_client_refuse_what_the_model_refuses(tmp_path, module, code):
    """Real processes: the stack's launcher before supervisord starts anything, and a model_client
    (as supervisord starts it) before it binds a socket."""
    env = clean_env(tmp_path / "run", GEMINI_MODEL=V31, GEMINI_THINKING="2048")
    done = subprocess.run([sys.executable, "-m", module], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == code, done.stderr
    assert "GEMINI_THINKING='2048': model gemini-3.1-flash-live-preview takes a thinking level" in done.stderr


@pytest.mark.parametrize("model, env", ACCEPTED)
async def test_each_profile_s_config_opens_a_session(start_emulator, model, env):
    """The real SDK sends each accepted config and the emulator sets the session up."""
    stage = await start_emulator()
    settings = load({"BRIDGE_RUN_DIR": stage.settings.run_dir, "EMULATOR_PORT": str(stage.settings.emulator_port),
                     "GEMINI_MODEL": model, **env})
    client = make_client(settings)
    try:
        await open_and_close(client, settings.model, live_config(
            settings, tools=Toolbox(transfer=True, profile=mp.lookup(model)).config()))
    finally:
        await client.aio.aclose()
