"""The import graph, read from the source with ast (every import, also those inside functions).

Which package may import which:

- ``common``: what every process shares (wire schema, links, settings, logging, the audio primitives:
  G.711, the FIR resampler, the energy VAD). It imports only itself.
- The stages, ``gateway``, ``transcoder`` and ``model_client``: ``common`` and their own package, never
  each other and never a tool.
- The tools ``softphone`` (a caller playing Twilio) and ``emulator`` (Gemini Live on this box):
  ``common``, their own package and a stage's public modules (``PUBLIC``), whose public names only.
- ``harness``: the whole stack as tests and benches start it. It runs the stack as processes, so of
  the project it imports only ``common`` (the launcher's pieces).
- ``bench``: every package but ``tests``, of a stage its public modules only: it drives calls with the
  softphone, and its echo model (bench/echo_model.py) is the model_client stage with the emulator's
  echo persona.
- ``tests``: every package, a stage's private names included (a unit test reaches into what it
  tests). Test files never import each other: they share helpers through conftest's fixtures, and
  what they share with the benches through ``harness``.

Outside ``tests`` nothing imports a name with a leading underscore from another package.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import NamedTuple

import pytest

from common.settings import load
from common.stack import supervisord_env

ROOT = Path(__file__).resolve().parents[1]
STAGES = {"gateway", "transcoder", "model_client"}
PACKAGES = {"common", *STAGES, "softphone", "emulator", "harness", "bench", "tests"}
ALLOWED = {
    "common": {"common"},
    **{stage: {"common", stage} for stage in STAGES},
    "softphone": {"common", "softphone", *STAGES},
    "emulator": {"common", "emulator", *STAGES},
    "harness": {"common", "harness"},
    "bench": PACKAGES - {"tests"},
    "tests": PACKAGES,
}
# What of a stage another package may import, and why.
PUBLIC = {
    "gateway.security": "Twilio's request signature, which the abuse bench forges wrong on purpose",
    "transcoder.call_audio": "a call's DSP state, which the dsp bench times",
    "model_client.stage": "the stage, which the bench's echo model runs with echo sessions",
    "model_client.barge": "the barge-in detector, which the barge-in bench measures",
}


class Arrow(NamedTuple):
    """One import of a project module: ``source`` (a file) imports ``names`` from ``target``."""
    source: Path
    line: int
    target: str
    names: tuple[str, ...]

    @property
    def importer(self) -> str:
        return self.source.relative_to(ROOT).parts[0]

    @property
    def package(self) -> str:
        return self.target.split(".")[0]

    def __repr__(self) -> str:
        names = f" ({', '.join(self.names)})" if self.names else ""
        return f"{self.source.relative_to(ROOT)}:{self.line} imports {self.target}{names}"


def package_dirs() -> list[Path]:
    return sorted(p.parent for p in ROOT.glob("*/__init__.py"))


def arrows() -> list[Arrow]:
    found = []
    for package in package_dirs():
        for source in sorted(package.rglob("*.py")):
            tree = ast.parse(source.read_text(), str(source))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    found += [Arrow(source=source, line=node.lineno, target=a.name, names=())
                              for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    target = node.module or ""
                    if node.level:  # relative: within the importer's own package
                        target = ".".join(source.relative_to(ROOT).parts[:1] + (target,)).rstrip(".")
                    found.append(Arrow(source=source, line=node.lineno, target=target,
                                       names=tuple(a.name for a in node.names)))
    return [a for a in found if a.package in PACKAGES]


def test_every_package_has_a_place_in_the_layers():
    """A new top-level package must be placed here (and its arrows decided) before it is used."""
    assert {p.name for p in package_dirs()} <= set(ALLOWED)


def test_the_graph_is_read():
    """The reader finds the arrows this file is about (guards against a reader that finds nothing)."""
    seen = {(a.importer, a.package) for a in arrows()}
    assert {("transcoder", "common"), ("softphone", "common"), ("bench", "harness"),
            ("tests", "harness"), ("bench", "model_client")} <= seen


@pytest.mark.parametrize("importer", sorted(ALLOWED))
def test_packages_import_only_what_their_layer_allows(importer):
    wrong = [a for a in arrows() if a.importer == importer and a.package not in ALLOWED[importer]]
    assert not wrong, f"{importer} may import only {sorted(ALLOWED[importer])}:\n" + \
        "\n".join(map(repr, wrong))


def test_other_packages_import_only_a_stages_public_modules():
    wrong = []
    for a in arrows():
        if a.importer == "tests" or a.package not in STAGES or a.package == a.importer:
            continue
        modules = [f"{a.target}.{name}" for name in a.names] if a.target == a.package else [a.target]
        if any(module not in PUBLIC for module in modules):
            wrong.append(a)
    assert not wrong, "move what several packages use to common/, or add the module to PUBLIC:\n" + \
        "\n".join(map(repr, wrong))


def test_test_files_share_helpers_through_fixtures_not_imports():
    wrong = [a for a in arrows() if a.package == "tests"]
    assert not wrong, "use a fixture in tests/conftest.py (or harness/ for what benches share):\n" + \
        "\n".join(map(repr, wrong))


def test_only_tests_import_private_names_from_another_package():
    wrong = [a for a in arrows() if a.importer != "tests" and a.package != a.importer
             and any(part.startswith("_") for part in (*a.target.split("."), *a.names))]
    assert not wrong, "\n".join(map(repr, wrong))


@pytest.mark.parametrize("env, module", [
    ({}, "model_client"),
    ({"GEMINI_API_KEY": "k"}, "model_client"),
    ({"BRIDGE_ECHO_MODEL": "true"}, "bench.echo_model"),
])
def test_the_echo_model_is_the_benchs_own_process(tmp_path, env, module):
    """The model_client never loads the bench's echo model: with BRIDGE_ECHO_MODEL supervisord runs
    bench.echo_model in its place, the model_client stage with echo sessions."""
    env = {"BRIDGE_RUN_DIR": str(tmp_path), **env}
    assert supervisord_env(load(env), env)["BRIDGE_MODEL_CLIENT_MODULE"] == module
    if module == "bench.echo_model":
        from bench.echo_model import EchoModelClientStage
        from model_client.stage import ModelClientStage

        assert issubclass(EchoModelClientStage, ModelClientStage)
