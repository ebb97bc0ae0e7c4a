"""The deployment files agree with the repository: what the Dockerfile copies exists, the image is
python:3.12-slim running as a non-root user with PORT honoured and an ENTRYPOINT that runs, and
supervisord.conf, read by supervisor's own parser with the environment common/stack.py gives it,
names only programs that are real modules. Docker does not run here: these check the files, which
is where a first deployment usually breaks (a renamed package, a file never copied, a typo in a
%(ENV_…)s expansion)."""

from __future__ import annotations

import asyncio
import fnmatch
import json
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from aiohttp import web
from supervisor.options import ServerOptions

from common.settings import load
from common.stack import supervisord_env
from gateway.app import make_app
from harness.stack import ROOT, clean_env, free_port

BASE_IMAGE = "python:3.12-slim"


def instructions(path: Path = ROOT / "Dockerfile") -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        current += line.removesuffix("\\").strip() + " "
        if not line.endswith("\\"):
            lines.append(current.strip())
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for op, args in instructions():
        if op == "FROM":
            result.append([])
        result[-1].append((op, args))
    return result


def arguments(args: str) -> list[str]:
    """An instruction's arguments: the JSON (exec) form or the shell-words form; flags dropped."""
    words = json.loads(args) if args.startswith("[") else shlex.split(args)
    return [w for w in words if not w.startswith("--")]


def final(op: str) -> str:
    """The last value of ``op`` in the final stage (the image that runs)."""
    values = [args for o, args in stages()[-1] if o == op]
    assert values, f"the final stage has no {op}"
    return values[-1]


def test_every_stage_is_python_312_slim():
    images = [arguments(args)[0] for stage in stages() for op, args in stage if op == "FROM"]
    assert images and all(image == BASE_IMAGE for image in images), images


def test_every_copy_source_exists():
    for op, args in instructions():
        if op in ("COPY", "ADD") and "--from=" not in args:
            for source in arguments(args)[:-1]:
                matches = list(ROOT.glob(source)) if any(c in source for c in "*?[") else [ROOT / source]
                assert matches and all(p.exists() for p in matches), f"{op} {args}: no {source} in the repo"


def test_the_image_holds_every_package():
    """Every package pyproject.toml installs is copied into the build, so `pip install .` in the image
    installs what a checkout does (a new top-level package must be added to both)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = {Path(arguments(args)[0]).name for op, args in stages()[0] if op == "COPY"}
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"
    assert {"pyproject.toml", "README.md"} <= {w for op, args in stages()[0] if op == "COPY"
                                                 for w in arguments(args)[:-1]}
    assert any(op == "COPY" and arguments(args)[0] == "supervisord.conf" for op, args in stages()[-1])


def test_dockerignore_keeps_what_the_image_copies():
    """A pattern in .dockerignore that matched a copied file (say ``*.js``) would break the image
    silently: the browser phone's page would 404 only in production."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    sources = [w for op, args in instructions() if op == "COPY" and "--from=" not in args
               for w in arguments(args)[:-1]]
    files = [p for source in sources for p in ([ROOT / source] if (ROOT / source).is_file()
                                               else (ROOT / source).rglob("*"))
             if p.is_file() and "__pycache__" not in p.parts]
    assert any(p.name == "worklet.js" for p in files)
    for path in files:
        relative = path.relative_to(ROOT)
        for part in [relative, *relative.parents][:-1]:  # the file and each folder above it
            hits = [p for p in patterns if fnmatch.fnmatch(str(part), p.removeprefix("**/"))
                    or fnmatch.fnmatch(part.name, p.removeprefix("**/"))]
            assert not hits, f"{relative} is copied into the image but .dockerignore has {hits}"


async def test_healthcheck_command_reads_healthz(tmp_path):
    """Docker's HEALTHCHECK, run as Docker would run it, against the gateway's real /healthz: with
    no transcoder or model_client the gateway is degraded, and the check says unhealthy."""
    command = arguments(final("HEALTHCHECK").split("CMD", 1)[1].strip())
    assert command[0] == "python"
    port = free_port()
    runner = web.AppRunner(make_app(load({"BRIDGE_RUN_DIR": str(tmp_path), "PORT": str(port)})))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        check = await asyncio.create_subprocess_exec(sys.executable, *command[1:], env={"PORT": str(port)},
                                                     stderr=asyncio.subprocess.PIPE)
        _, stderr = await asyncio.wait_for(check.communicate(), 30)
    finally:
        await runner.cleanup()
    assert check.returncode == 1 and not stderr, stderr.decode()  # degraded, not a crash


def test_runs_as_a_non_root_user():
    stage = stages()[-1]
    user = final("USER").split(":")[0]
    assert user not in ("root", "0"), "the container must not run as root"
    position = {op: i for i, (op, _) in enumerate(stage)}
    assert position["USER"] < position["ENTRYPOINT"]
    if not user.isdigit():  # a named user must be created in the image
        assert any(op == "RUN" and user in args and ("useradd" in args or "adduser" in args)
                   for op, args in stage[:position["USER"]]), f"user {user} is never created"


def test_entrypoint_runs_the_stack_module(tmp_path):
    """The ENTRYPOINT is `python -m common.stack`, run from the WORKDIR the source is copied to; it
    reads the settings first, so a bad one stops it with a clear message before supervisord starts."""
    entry = arguments(final("ENTRYPOINT"))
    assert entry[:2] == ["python", "-m"] and len(entry) == 3, entry
    module = entry[2]
    assert (ROOT / Path(*module.split("."))).with_suffix(".py").exists()
    assert ("COPY", f"--from=build /src {final('WORKDIR')}") in stages()[-1], "the source is not in WORKDIR"
    env = clean_env(tmp_path, PORT="not-a-port")
    run = subprocess.run([sys.executable, "-m", module], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 1 and "configuration error: PORT must be an integer" in run.stderr, run.stderr


def test_port_is_honoured():
    env = dict(word.split("=", 1) for word in shlex.split(final("ENV")))
    assert env["PORT"] == final("EXPOSE") == "8080"
    settings = load({"PORT": "9123"})
    assert (settings.port, settings.host) == (9123, "0.0.0.0")  # all interfaces: reachable from outside
    assert supervisord_env(settings, {"PORT": "9123"})["PORT"] == "9123"  # supervisord hands it down


@pytest.mark.parametrize("credentials, emulator", [({}, True), ({"GEMINI_API_KEY": "k"}, False)])
def test_supervisord_conf_parses_and_runs_real_modules(tmp_path, monkeypatch, credentials, emulator):
    env = {"BRIDGE_RUN_DIR": str(tmp_path), "BRIDGE_TRANSCODERS": "3", **credentials}
    settings = load(env)
    for name, value in supervisord_env(settings, env).items():
        monkeypatch.setenv(name, value)  # supervisor expands %(ENV_X)s from os.environ
    options = ServerOptions()
    options.configfile = str(ROOT / "supervisord.conf")
    options.process_config(do_usage=False)  # raises ValueError on anything it cannot parse

    programs = {group.name: group.process_configs for group in options.process_group_configs}
    assert set(programs) == {"stack_watch", "emulator", "transcoder", "model_client", "gateway"}
    assert [p.name for p in programs["transcoder"]] == ["transcoder-0", "transcoder-1", "transcoder-2"]
    assert programs["emulator"][0].autostart is emulator
    for process in (p for group in programs.values() for p in group):
        python, flag, module = shlex.split(process.command)
        assert (python, flag) == (sys.executable, "-m"), process.command
        path = ROOT / Path(*module.split("."))
        assert (path / "__main__.py").exists() or path.with_suffix(".py").exists(), process.command
        assert process.directory == str(ROOT)
        assert process.stopsignal == 15  # SIGTERM: every stage's clean shutdown
    priority = {group.name: group.priority for group in options.process_group_configs}
    assert priority["stack_watch"] < priority["emulator"]  # the watch stops last
    assert priority["emulator"] < priority["transcoder"] == priority["model_client"] < priority["gateway"]


# --- deploy/: Cloud Run and Kubernetes ---------------------------------------------------------------

def setting_names() -> set[str]:
    """Every environment variable the settings declare."""
    from common.settings import specs
    return {name for spec in specs() for name in (spec.env, *spec.also)}


def test_cloudrun_script_parses_and_sets_only_real_settings():
    import re
    script = (ROOT / "deploy" / "cloudrun.sh").read_text()
    subprocess.run(["bash", "-n", str(ROOT / "deploy" / "cloudrun.sh")], check=True)
    names = set(re.findall(r"\b([A-Z][A-Z0-9_]{3,})=", " ".join(re.findall(r'env[-_]vars[^\n]*', script))))
    names |= set(re.findall(r'"?([A-Z][A-Z0-9_]{3,})=[a-z-]+:latest', script))
    assert names and names <= setting_names(), names - setting_names()
    for flag in ("--session-affinity", "--timeout 3600", "--min-instances 1", "--no-cpu-throttling",
                 '--concurrency "$CONCURRENCY"'):
        assert flag in script
    assert not re.search(r"echo[^\n]*\$\{?(TWILIO_AUTH_TOKEN|GEMINI_API_KEY|BRIDGE_SECRET)", script)


def test_cloudrun_concurrency_comes_from_the_load_bench(tmp_path):
    """The script's default concurrency is the measured capacity with its headroom (docs/load.json)."""
    import re
    script = (ROOT / "deploy" / "cloudrun.sh").read_text()
    capacity = json.loads((ROOT / "docs" / "load.json").read_text())["capacity"]["full_stack"]
    headroom = float(re.search(r"^HEADROOM=([0-9.]+)$", script, re.M).group(1))
    body = script[script.index("measured_concurrency() {"):script.index("\n}\n") + 3]
    probe = tmp_path / "probe.sh"
    probe.write_text(f"HEADROOM={headroom}\n{body}\nmeasured_concurrency\n")
    got = subprocess.run(["bash", str(probe)], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert int(got) == max(1, int(capacity * headroom)) > 1


def test_kubernetes_manifest_matches_the_gateway():
    import yaml
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "kubernetes.yaml").read_text()))
    bridge = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "bridge")
    pod = bridge["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert set(env) <= setting_names(), set(env) - setting_names()
    assert env["REDIS_URL"].startswith("redis://redis:") and bridge["spec"]["replicas"] >= 2
    assert container["ports"][0]["containerPort"] == int(env["PORT"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["terminationGracePeriodSeconds"] > float(env["BRIDGE_DRAIN_S"]) + 7  # + supervisord's stop
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    served = {r.resource.canonical for r in make_app(load({"BRIDGE_RUN_DIR": "/tmp"})).router.routes()}
    assert {"/readyz", "/healthz"} <= served
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "Service"} == {"bridge", "redis"}
