"""Checks of docker/ that need no Docker engine, cloud account or Kubernetes cluster.

Every YAML file parses; compose.yaml is validated against the Compose Specification schema and
cluster.yaml against Ray's cluster-config schema; the Dockerfile is parsed into instructions;
every `tunebert sweep`, `ray start` and `mlflow server` command written in docker/ is parsed by
the real command-line parser, so the files cannot drift from the code. One slow test runs the
compose file's `mlflow server` command for real on 127.0.0.1.

Optional test dependencies (skipped when missing): check-jsonschema (ships the Compose schema),
dockerfile-parse (a second opinion on the Dockerfile).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator, NamedTuple
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
SHARED_RUNS = "/shared/tunebert-runs"
PROJECT_SERVICES = ("mlflow", "ray-head", "ray-worker", "sweep")
RAY_NODE_SERVICES = ("ray-head", "ray-worker", "sweep")
COMMAND_PREFIXES = (("tunebert", "sweep"), ("ray", "start"), ("mlflow", "server"))


# --------------------------------------------------------------------------- shell command lines
def expand_compose_variables(text: str) -> str:
    """Compose interpolation with an empty environment: `${VAR:-default}` → default, `$$` → `$`."""
    text = text.replace("$$", "\0")
    text = re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", text)
    return text.replace("\0", "$")


def _shell_words(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()<>")
    lexer.whitespace_split = True
    lexer.commenters = ""
    return list(lexer)


def commands_in(script: str) -> Iterator[list[str]]:
    """Every simple command (argv) in a shell script, quoted inner scripts included (`ray exec "..."`)."""
    script = script.replace("\\\n", " ")
    for line in script.splitlines():
        if not any(" ".join(prefix) in line for prefix in COMMAND_PREFIXES):
            continue  # prose and unrelated lines: never tokenized, so a stray quote is harmless
        try:
            words = _shell_words(line)
        except ValueError as exc:
            raise AssertionError(f"cannot split this shell line ({exc}): {line!r}") from None
        argv: list[str] = []
        for word in words + [";"]:
            if word and set(word) <= set(";&|()<>"):
                if argv:
                    yield argv
                argv = []
                continue
            argv.append(word)
            if " " in word:
                yield from commands_in(word)


def commands_starting_with(script: str, *prefix: str) -> list[list[str]]:
    """The argv from `prefix` on, wherever it starts (`docker compose exec ray-head tunebert sweep ...`)."""
    found = []
    for argv in commands_in(script):
        starts = [i for i in range(len(argv)) if tuple(argv[i:i + len(prefix)]) == prefix]
        if starts:
            found.append(argv[starts[0]:])
    return found


def yaml_strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from yaml_strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from yaml_strings(value)


def comment_examples(text: str) -> str:
    """Usage examples in comments: full-line comments indented past `# ` (`#   ray up ...`), as
    code is indented in Markdown; ordinary `# prose` lines are left out."""
    lines = (line.strip() for line in text.splitlines())
    return "\n".join(line[1:].strip() for line in lines if line.startswith("#  "))


def markdown_code(text: str) -> str:
    return "\n".join(re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.S | re.M))


def file_scripts(name: str) -> str:
    """All shell text of a docker/ file: YAML string values and comments, or README code blocks."""
    text = (DOCKER / name).read_text()
    if name.endswith(".md"):
        return markdown_code(text)
    values = [s for doc in yaml.safe_load_all(text) for s in yaml_strings(doc)]
    script = "\n".join(values + [comment_examples(text)])
    return expand_compose_variables(script) if name == "compose.yaml" else script


def parse_tunebert(argv: list[str]):
    """argv[0] == 'tunebert'; parse with the real CLI parser, failing with its message."""
    from tuning.cli import build_parser

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return build_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"`{shlex.join(argv)}` does not parse: {stderr.getvalue().strip()}")


def parse_click(command, argv: list[str], skip: int = 2) -> dict[str, Any]:
    """Options of a click command line (`ray start ...`, `mlflow server ...`), without running it."""
    import click

    try:
        return command.make_context(" ".join(argv[:skip]), list(argv[skip:])).params
    except click.ClickException as exc:
        pytest.fail(f"`{shlex.join(argv)}` does not parse: {exc.format_message()}")


def ray_start_params(argv: list[str]) -> dict[str, Any]:
    from ray.scripts.scripts import start

    return parse_click(start, argv)


def mlflow_server_params(argv: list[str]) -> dict[str, Any]:
    from mlflow.cli import server

    return parse_click(server, argv)


# --------------------------------------------------------------------------- Dockerfile parsing
class Instruction(NamedTuple):
    keyword: str  # upper case: FROM, RUN, ...
    args: str     # the rest, continuation lines joined
    line: int     # 1-based line where it starts


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions in order; comments and parser directives dropped, `\\` continuations joined."""
    instructions: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not parts and (not stripped or stripped.startswith("#")):
            continue
        if parts and stripped.startswith("#"):
            continue  # Docker drops comment lines inside a continued instruction
        if not parts:
            start = number
        continued = stripped.endswith("\\")
        parts.append(stripped[:-1].strip() if continued else stripped)
        if not continued:
            keyword, _, args = " ".join(p for p in parts if p).partition(" ")
            instructions.append(Instruction(keyword.upper(), args.strip(), start))
            parts = []
    assert not parts, "Dockerfile ends inside a continued instruction"
    return instructions


def substitute(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m.group(1) or m.group(2), m.group(0)), text)


def arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    """Global ARGs (before the first FROM) with their defaults."""
    values: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "FROM":
            break
        if ins.keyword == "ARG":
            name, _, default = ins.args.partition("=")
            values[name] = default
    return values


def resolve_base_image(instructions: list[Instruction], build_args: dict[str, str]) -> str:
    """The registry image the last stage builds on, following stage aliases."""
    values = {**arg_defaults(instructions), **build_args}
    stages: dict[str, str] = {}
    image = ""
    for ins in instructions:
        if ins.keyword == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--platform")]
            image = substitute(words[0], values)
            image = stages.get(image, image)
            if len(words) == 3 and words[1].upper() == "AS":
                stages[words[2]] = image
    return image


# --------------------------------------------------------------------------- .dockerignore matching
def _ignore_regex(pattern: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern]]:
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip().lstrip("/"))
        rules.append((negated, _ignore_regex(pattern)))
    return rules


def is_ignored(path: str, rules: list[tuple[bool, re.Pattern]]) -> bool:
    """Docker's rule: a path is excluded when it or a parent folder matches; the last match wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for negated, regex in rules:
        if any(regex.fullmatch(c) for c in candidates):
            ignored = not negated
    return ignored


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def compose_expanded(compose) -> dict:
    """The compose file as `docker compose` sees it with no variables set."""
    def expand(node):
        if isinstance(node, str):
            return expand_compose_variables(node)
        if isinstance(node, dict):
            return {k: expand(v) for k, v in node.items()}
        if isinstance(node, list):
            return [expand(v) for v in node]
        return node

    return expand(copy.deepcopy(compose))


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile((DOCKER / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def rayjob_docs() -> list[dict]:
    return [d for d in yaml.safe_load_all((DOCKER / "rayjob.yaml").read_text()) if d]


@pytest.fixture(scope="module")
def rayjob(rayjob_docs) -> dict:
    jobs = [d for d in rayjob_docs if d.get("kind") == "RayJob"]
    assert len(jobs) == 1, f"rayjob.yaml must hold exactly one RayJob, found {len(jobs)}"
    return jobs[0]


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((DOCKER / "cluster.yaml").read_text())


def service_command(service: dict) -> str:
    command = service.get("command", "")
    return command if isinstance(command, str) else "\n".join(command)  # e.g. [bash, -c, SCRIPT]


def the_command(service: dict, *prefix: str) -> list[str]:
    """The one command line starting with `prefix` in a compose service's command."""
    found = commands_starting_with(service_command(service), *prefix)
    assert len(found) == 1, f"expected one `{' '.join(prefix)}` in {service_command(service)!r}, found {len(found)}"
    return found[0]


def service_env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def service_mounts(service: dict) -> dict[str, str]:
    """target path → source (volume name or host path)."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume.get("source", ""), volume["target"]
        mounts[target] = source
    return mounts


def published_ports(service: dict) -> list[tuple[str, str]]:
    """(host_ip, text) for each port mapping; host_ip is '' when none is given."""
    result = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            result.append((str(port.get("host_ip", "")), json.dumps(port)))
            continue
        parts = str(port).split(":")
        result.append((parts[0] if len(parts) == 3 else "", str(port)))
    return result


# --------------------------------------------------------------------------- every file
@pytest.mark.parametrize("name", ["compose.yaml", "cluster.yaml", "rayjob.yaml"])
def test_yaml_files_parse(name):
    docs = [d for d in yaml.safe_load_all((DOCKER / name).read_text()) if d is not None]
    assert docs and all(isinstance(d, dict) for d in docs), f"{name}: expected YAML mappings"


@pytest.mark.parametrize("name", ["compose.yaml", "cluster.yaml", "rayjob.yaml", "README.md"])
def test_every_sweep_command_parses_with_the_real_cli(name):
    found = commands_starting_with(file_scripts(name), "tunebert", "sweep")
    assert found, f"docker/{name} shows no `tunebert sweep` command"
    for argv in found:
        assert parse_tunebert(argv).command == "sweep"


@pytest.mark.parametrize("name", ["compose.yaml", "cluster.yaml", "rayjob.yaml"])
def test_cluster_sweeps_join_the_cluster_and_its_shared_folder(name):
    for argv in commands_starting_with(file_scripts(name), "tunebert", "sweep"):
        args = parse_tunebert(argv)
        assert args.address, f"docker/{name}: `{shlex.join(argv)}` must join the cluster (--address)"
        assert args.storage == SHARED_RUNS, (
            f"docker/{name}: `{shlex.join(argv)}` must use the shared sweep folder "
            f"--storage {SHARED_RUNS}, the path mounted on every node")


@pytest.mark.parametrize("name", ["compose.yaml", "cluster.yaml", "rayjob.yaml", "README.md"])
def test_every_sweep_command_builds_a_valid_sweep_config(name, monkeypatch):
    """Beyond argparse: the settings are turned into a SweepConfig (which validates itself) and
    the remote-cluster/tracking-store rule is applied; nothing runs."""
    import tuning.sweep.runner as runner
    from search_spaces.presets import get_preset
    from tuning.cli import main

    class Captured(Exception):
        pass

    def capture(cfg):
        raise Captured(cfg)

    monkeypatch.setattr(runner, "run_sweep", capture)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")  # what every file provides
    for argv in commands_starting_with(file_scripts(name), "tunebert", "sweep"):
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr), pytest.raises(Captured) as caught:
            main(argv[1:])
        cfg = caught.value.args[0]
        runner.check_tracking_target(cfg, cfg.resolved_tracking_uri())
        for preset in cfg.warm_start:
            get_preset(preset)


@pytest.mark.parametrize("name", ["compose.yaml", "cluster.yaml"])
def test_every_ray_start_command_parses_with_ray_cli(name):
    found = commands_starting_with(file_scripts(name), "ray", "start")
    assert found, f"docker/{name} shows no `ray start` command"
    for argv in found:
        ray_start_params(argv)


def test_ray_versions_agree(dockerfile, rayjob):
    ray_version = arg_defaults(dockerfile)["RAY_VERSION"]
    assert str(rayjob["spec"]["rayClusterSpec"]["rayVersion"]) == ray_version, (
        "rayjob.yaml rayVersion must match the Dockerfile's RAY_VERSION")
    # the package pins the minor release the image ships (the code relies on its internals)
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement
    from packaging.version import Version

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (ray,) = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == "ray"]
    major, minor, _ = Version(ray_version).release
    assert ray.specifier.contains(ray_version), f"pyproject's {ray} refuses the image's Ray {ray_version}"
    for other in (f"{major}.{minor + 1}.0", f"{major}.{minor - 1}.0"):
        assert not ray.specifier.contains(other), f"pyproject's {ray} admits untested Ray {other}"


# --------------------------------------------------------------------------- compose.yaml
def test_compose_has_the_stack(compose):
    assert set(compose["services"]) >= {"postgres", "mlflow", "ray-head", "ray-worker", "sweep"}
    assert compose["services"]["sweep"].get("profiles") == ["sweep"], "sweep must be opt-in (profile)"
    assert compose["services"]["postgres"]["image"].startswith("postgres:16")


def test_compose_validates_against_the_compose_spec_schema(compose_expanded):
    pytest.importorskip("check_jsonschema", reason="check-jsonschema ships the Compose schema")
    import importlib.resources

    import jsonschema

    schema_file = importlib.resources.files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
              for e in validator.iter_errors(compose_expanded)]
    assert not errors, "compose.yaml breaks the Compose Specification:\n" + "\n".join(errors)


def test_compose_publishes_ports_on_loopback_only(compose):
    for name, service in compose["services"].items():
        assert service.get("network_mode") != "host", f"{name}: network_mode host bypasses port binding"
        for host_ip, text in published_ports(service):
            assert host_ip == "127.0.0.1", (
                f"{name}: port {text} is published on every interface; bind it to 127.0.0.1")
    assert "ports" not in compose["services"]["postgres"], "postgres must not be published to the host"
    published = {text for s in compose["services"].values() for _, text in published_ports(s)}
    assert published == {"127.0.0.1:5000:5000", "127.0.0.1:8265:8265"}


def test_compose_services_are_unprivileged(compose):
    for name, service in compose["services"].items():
        assert not service.get("privileged"), f"{name} must not be privileged"
        assert "docker.sock" not in json.dumps(service.get("volumes", [])), f"{name} mounts the Docker socket"


def test_compose_project_services_build_from_docker_dockerfile(compose):
    for name in PROJECT_SERVICES:
        build = compose["services"][name].get("build")
        assert build, f"{name} must build the project image"
        assert build["context"] == ".." and build["dockerfile"] == "docker/Dockerfile", (
            f"{name}: build must be context '..' with dockerfile 'docker/Dockerfile', got {build}")
        assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == DOCKER / "Dockerfile"
        variant = expand_compose_variables(build["args"]["VARIANT"])
        assert variant in ("cpu", "cuda")


def test_compose_ray_nodes_share_storage_and_tracking(compose_expanded):
    services = compose_expanded["services"]
    mlflow_port = mlflow_server_params(the_command(services["mlflow"], "mlflow", "server"))["port"]
    sources = set()
    for name in RAY_NODE_SERVICES:
        mounts = service_mounts(services[name])
        assert SHARED_RUNS in mounts, f"{name} must mount the sweep volume at {SHARED_RUNS}"
        sources.add(mounts[SHARED_RUNS])
        uri = service_env(services[name]).get("MLFLOW_TRACKING_URI", "")
        assert urlsplit(uri).hostname == "mlflow" and urlsplit(uri).port == mlflow_port, (
            f"{name}: MLFLOW_TRACKING_URI={uri!r} must point at the mlflow service, port {mlflow_port}")
    assert len(sources) == 1, f"head, workers and sweep mount different volumes: {sources}"
    assert sources.pop() in compose_expanded["volumes"], "the sweep volume must be a named volume"


def test_compose_ray_topology(compose_expanded):
    services = compose_expanded["services"]
    head_params = ray_start_params(the_command(services["ray-head"], "ray", "start"))
    assert head_params["head"] and head_params["block"] and head_params["port"] == 6379
    assert head_params["dashboard_port"] == 8265

    worker_params = ray_start_params(the_command(services["ray-worker"], "ray", "start"))
    assert worker_params["address"] == "ray-head:6379" and worker_params["block"]
    worker = services["ray-worker"]
    assert "container_name" not in worker and "ports" not in worker, "ray-worker must stay scalable"
    assert worker["deploy"]["replicas"] >= 1

    sweep = parse_tunebert(the_command(services["sweep"], "tunebert", "sweep"))
    assert sweep.address == "ray-head:6379" and sweep.tracking_uri == "http://mlflow:5000"


def test_compose_mlflow_server_command(compose_expanded):
    argv = the_command(compose_expanded["services"]["mlflow"], "mlflow", "server")
    params = mlflow_server_params(argv)
    uri = urlsplit(params["backend_store_uri"])
    assert uri.scheme == "postgresql+psycopg2"  # SQLAlchemy maps bare postgresql:// to psycopg 3
    assert uri.hostname == "postgres" and uri.port == 5432
    assert params["serve_artifacts"] and params["artifacts_destination"] == "/mlartifacts"
    assert params["host"] == "0.0.0.0"
    allowed = params["allowed_hosts"].split(",")
    assert f"mlflow:{params['port']}" in allowed, "Ray nodes call MLflow as mlflow:PORT; allow that Host"


def test_compose_password_comes_from_the_environment(compose):
    """One variable sets the database password and the one MLflow connects with (libpq reads
    PGPASSWORD; the URI names no password); the default is marked local-only."""
    variable = compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert re.fullmatch(r"\$\{POSTGRES_PASSWORD:-\w+\}", variable), f"got {variable!r}"
    assert service_env(compose["services"]["mlflow"])["PGPASSWORD"] == variable
    argv = the_command(compose["services"]["mlflow"], "mlflow", "server")
    uri = urlsplit(mlflow_server_params(argv)["backend_store_uri"])
    assert uri.username == "mlflow" and uri.password is None
    line = next(l for l in (DOCKER / "compose.yaml").read_text().splitlines() if "POSTGRES_PASSWORD: " in l)
    assert "local" in line, "say next to the default password that it is for local use only"


PASSWORD_IN_TEXT = re.compile(
    r"://[^:/@\s]+:[^@/\s]+@"              # a URI with user:password@
    r"|\$\{?\w*(PASSWORD|PASSWD|SECRET|TOKEN)\w*"  # a secret variable expanded into the line
    r"|--password(?!-stdin)\b|(^|\s)-p\s*\S", re.I)


def process_arguments(service: dict) -> list[str]:
    """What a compose service puts on command lines: its command, entrypoint and healthcheck test."""
    found = []
    for key in ("command", "entrypoint"):
        value = service.get(key)
        found += [value] if isinstance(value, str) else list(value or [])
    test = (service.get("healthcheck") or {}).get("test") or []
    found += [test] if isinstance(test, str) else list(test)
    return [str(v) for v in found]


@pytest.mark.parametrize("service", ["postgres", "mlflow", "ray-head", "ray-worker", "sweep"])
def test_compose_puts_no_secret_on_a_command_line(compose, service):
    """Process arguments are world-readable (`ps`, /proc/PID/cmdline, `docker inspect`): the
    database password reaches PostgreSQL and MLflow through the environment only."""
    for text in process_arguments(compose["services"][service]):
        match = PASSWORD_IN_TEXT.search(text)
        assert match is None, f"{service}: a secret on the command line ({match.group(0)!r}) in {text!r}"


def test_cluster_files_put_no_secret_on_a_command_line(cluster, rayjob):
    lines = [rayjob["spec"]["entrypoint"], *cluster["head_start_ray_commands"],
             *cluster["worker_start_ray_commands"], *cluster["docker"]["run_options"]]
    for text in lines:
        assert PASSWORD_IN_TEXT.search(text) is None, text


@pytest.mark.slow
def test_compose_sweep_passes_docker_stop_on_to_the_sweep(compose_expanded, tmp_path):
    """`docker stop` sends SIGTERM to the container's PID 1, the sweep service's bash: it must
    reach `tunebert sweep` (which then ends the sweep KILLED and prints how to resume), bash must
    wait for it, leave the Ray cluster and exit with the sweep's status. Run for real with bash,
    `ray` and `tunebert` stood in for by scripts that log what happens to them."""

    (script,) = [c for c in compose_expanded["services"]["sweep"]["command"] if "tunebert sweep" in c]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "log"
    (bin_dir / "ray").write_text(f"#!/bin/sh\necho ray $1 >> {log}\n")
    (bin_dir / "tunebert").write_text(
        f"#!{sys.executable}\nimport signal, sys, time\n"
        f"def stop(*_):\n    time.sleep(0.5)  # a sweep takes a moment to end its runs\n"
        f"    open({str(log)!r}, 'a').write('tunebert got SIGTERM\\n'); sys.exit(3)\n"
        f"signal.signal(signal.SIGTERM, stop)\n"
        f"open({str(log)!r}, 'a').write('tunebert started\\n')\ntime.sleep(60)\n")
    for tool in ("ray", "tunebert"):
        (bin_dir / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    shell = subprocess.Popen(["bash", "-c", script], env=env)
    deadline = time.time() + 20
    while "tunebert started" not in (log.read_text() if log.exists() else ""):
        assert time.time() < deadline and shell.poll() is None, "the sweep never started"
        time.sleep(0.05)
    shell.send_signal(signal.SIGTERM)
    assert shell.wait(timeout=20) == 3, "bash must exit with the sweep's own status"
    assert log.read_text().splitlines() == ["ray start", "tunebert started", "tunebert got SIGTERM",
                                            "ray stop"]


def test_compose_mlflow_command_serves_ray_nodes_for_real(compose_expanded, tmp_path):
    """The compose `mlflow server` line, run here with SQLite: it starts, and it answers requests
    addressed to mlflow:5000 (as the Ray nodes send them) while refusing unknown Host headers."""
    argv = the_command(compose_expanded["services"]["mlflow"], "mlflow", "server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    replace = {"--backend-store-uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
               "--artifacts-destination": str(tmp_path / "artifacts"),
               "--host": "127.0.0.1", "--port": str(port), "--workers": "1"}
    local = [replace.get(argv[i - 1], word) if i else word for i, word in enumerate(argv)]
    log = tmp_path / "server.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", *local[1:]], cwd=tmp_path,
                                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def get(path: str, host: str) -> int:
        request = urllib.request.Request(base + path, headers={"Host": host})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, "mlflow server exited:\n" + log.read_text()[-3000:]
            try:
                if get("/health", f"127.0.0.1:{port}") == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not answer /health in 180 s"
            time.sleep(1)
        search = "/api/2.0/mlflow/experiments/search?max_results=1"
        assert get(search, "mlflow:5000") == 200          # a Ray node
        assert get(search, "127.0.0.1:5000") == 200       # the host's browser, via the published port
        assert get(search, "evil.example.com:5000") == 403
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# --------------------------------------------------------------------------- Dockerfile
def test_dockerfile_base_image_follows_variant(dockerfile):
    args = arg_defaults(dockerfile)
    assert args.get("VARIANT") == "cpu", "ARG VARIANT=cpu must come before the first FROM"
    final_from = [i for i in dockerfile if i.keyword == "FROM"][-1]
    assert "VARIANT" in final_from.args, f"line {final_from.line}: the last FROM must depend on VARIANT"
    # Ray's tag scheme: {ray version}-py{3XY}-{cpu | gpu | cuXXX}
    for variant, platform in (("cpu", r"cpu"), ("cuda", r"gpu|cu\d+")):
        image = resolve_base_image(dockerfile, {"VARIANT": variant})
        match = re.fullmatch(rf"rayproject/ray:(\d+\.\d+\.\d+)-py3\d+-({platform})", image)
        assert match, f"VARIANT={variant} builds on {image!r}, not an official Ray {variant} image"
        assert match.group(1) == args["RAY_VERSION"]


def test_dockerfile_installs_torch_and_the_project(dockerfile):
    runs = [i.args for i in dockerfile if i.keyword == "RUN"]
    stage_args = dict(i.args.split("=", 1) for i in dockerfile if i.keyword == "ARG" and "=" in i.args)
    torch_run = next((r for r in runs if "torch==" in r), None)
    assert torch_run, "no RUN installs a pinned torch"
    assert substitute("$TORCH_CPU_INDEX", stage_args) == "https://download.pytorch.org/whl/cpu"
    readme_pins = set(re.findall(r"torch==([\w.+]+)", (REPO / "README.md").read_text()))
    assert readme_pins, "README.md pins no torch (torch==X.Y.Z in its Quickstart): the image's pin has nothing to match"
    assert readme_pins == {stage_args["TORCH_VERSION"]}, (
        f"the image installs torch=={stage_args['TORCH_VERSION']} but README.md pins torch=={sorted(readme_pins)}")
    assert any(" . " in f" {r} " and "pip install" in r for r in runs), "the project is never `pip install .`-ed"
    copies = [i.args for i in dockerfile if i.keyword == "COPY"]
    assert any(c.split()[-2:] == [".", "."] for c in copies), "the build context is never copied in"


def test_dockerfile_runs_as_non_root_without_entrypoint(dockerfile):
    users = [i for i in dockerfile if i.keyword == "USER"]
    assert users, "no USER instruction"
    assert users[-1].args.split(":")[0] not in ("root", "0"), f"line {users[-1].line}: the image ends as root"
    assert any(i.keyword == "WORKDIR" for i in dockerfile)
    for ins in dockerfile:
        if ins.keyword == "ENTRYPOINT":
            assert json.loads(ins.args) == [], f"line {ins.line}: the image must not set an ENTRYPOINT"


def test_dockerfile_fetches_nothing_with_add(dockerfile):
    for ins in dockerfile:
        if ins.keyword == "ADD":
            assert not re.search(r"(^|\s)(https?://|git@)", ins.args), f"line {ins.line}: ADD of a URL"


def test_dockerfile_ignore_keeps_what_pip_install_needs():
    rules = dockerignore_rules((DOCKER / "Dockerfile.dockerignore").read_text())
    needed = ["pyproject.toml", "README.md"] + [
        str(p.relative_to(REPO)) for package in ("tuning", "search_spaces", "trainables")
        for p in (REPO / package).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    kept_out = [p for p in needed if is_ignored(p, rules)]
    assert not kept_out, f"Dockerfile.dockerignore hides files `pip install .` needs: {kept_out[:5]}"
    for path in (".venv/bin/python", ".git/HEAD", "tunebert-runs/ray/x/tuner.pkl", "mlruns/0/meta.yaml",
                 "tuning/__pycache__/cli.cpython-311.pyc", "tunebert.egg-info/PKG-INFO"):
        assert is_ignored(path, rules), f"{path} would be sent to the Docker daemon"


def test_dockerfile_as_dockerfile_parse_reads_it(dockerfile):
    """The product read by an independent parser (a test dependency: missing, it fails): each
    variant builds on the official Ray image of RAY_VERSION, pins TORCH_VERSION and ends as a
    non-root user; and our parser, which the other tests use, reads the same instructions."""
    import dockerfile_parse

    text = (DOCKER / "Dockerfile").read_text()
    theirs = [(s["instruction"], " ".join(s["value"].split()))
              for s in dockerfile_parse.DockerfileParser(fileobj=io.BytesIO(text.encode())).structure
              if s["instruction"] != "COMMENT"]
    assert [(i.keyword, " ".join(i.args.split())) for i in dockerfile] == theirs
    defaults = dict(i.args.split("=", 1) for i in dockerfile if i.keyword == "ARG" and "=" in i.args)
    for variant, platform in (("cpu", "cpu"), ("cuda", "gpu")):
        parser = dockerfile_parse.DockerfileParser(fileobj=io.BytesIO(text.encode()), build_args={"VARIANT": variant})
        stages = {s["value"].split()[-1]: s["value"].split()[0] for s in parser.structure
                  if s["instruction"] == "FROM" and " AS " in s["value"].upper()}
        final = parser.parent_images[-1]
        image = parser.parent_images[list(stages).index(final)] if final in stages else final
        assert image == f"rayproject/ray:{defaults['RAY_VERSION']}-{defaults['PYTHON_TAG']}-{platform}", (
            f"VARIANT={variant} builds on {image!r}")
        assert parser.args["TORCH_VERSION"] == defaults["TORCH_VERSION"]
        users = [s["value"].split(":")[0] for s in parser.structure if s["instruction"] == "USER"]
        assert users and users[-1] not in ("root", "0"), f"VARIANT={variant}: the image ends as {users[-1:]}"


def test_every_command_the_files_show_is_one_the_tests_check():
    """Each `tunebert sweep` / `ray start` / `mlflow server` the docker files and docker/README.md
    show is found by the command splitter, so none escapes the tests that check them."""
    for name in ("compose.yaml", "cluster.yaml", "rayjob.yaml", "README.md"):
        script = file_scripts(name)
        for prefix in COMMAND_PREFIXES:
            shown = len(re.findall(rf"(?<![\w-]){re.escape(' '.join(prefix))}(?![\w-])", script))
            found = commands_starting_with(script, *prefix)
            assert len(found) == shown, f"docker/{name}: {shown} `{' '.join(prefix)}` shown, {len(found)} found"


def test_own_parsers_handle_the_tricky_cases():
    parsed = parse_dockerfile("# syntax=docker/dockerfile:1\nFROM a\nRUN x \\\n  # note\n  && y\nuser ray\n")
    assert parsed == [Instruction("FROM", "a", 2), Instruction("RUN", "x && y", 3), Instruction("USER", "ray", 6)]
    assert commands_starting_with('ulimit -n 1; ray start --head && ray exec c "tunebert sweep --trials 2"',
                                  "tunebert", "sweep") == [["tunebert", "sweep", "--trials", "2"]]
    assert len(commands_starting_with("ulimit -n 1; ray start --head", "ray", "start")) == 1
    assert expand_compose_variables("--n ${A:-2} ${B-x} $$? ${C}") == "--n 2 x $? "
    rules = dockerignore_rules("**/__pycache__\n.venv\n*.egg-info\n")
    assert is_ignored("a/b/__pycache__/c.pyc", rules) and is_ignored("x.egg-info/PKG", rules)
    assert not is_ignored("a/.venv", rules) and not is_ignored("tuning/cli/__init__.py", rules)


# --------------------------------------------------------------------------- rayjob.yaml
def _pods(rayjob: dict) -> dict[str, dict]:
    spec = rayjob["spec"]["rayClusterSpec"]
    pods = {"head": spec["headGroupSpec"]["template"]["spec"]}
    for group in spec.get("workerGroupSpecs", []):
        pods[group["groupName"]] = group["template"]["spec"]
    return pods


def test_rayjob_kind_and_lifecycle(rayjob):
    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["kind"] == "RayJob"
    assert rayjob["spec"]["shutdownAfterJobFinishes"] is True


def test_rayjob_entrypoint_runs_a_sweep_on_the_cluster(rayjob):
    (argv,) = commands_starting_with(rayjob["spec"]["entrypoint"], "tunebert", "sweep")
    args = parse_tunebert(argv)
    assert args.address == "auto", "inside a RayJob the driver runs on the head: use --address auto"
    assert args.gpus_per_trial > 0, "the sweep should use the GPU workers"


def test_rayjob_has_a_gpu_worker_group(rayjob):
    groups = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    gpu_limits = [int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
                  for g in groups for c in g["template"]["spec"]["containers"]]
    assert any(n >= 1 for n in gpu_limits), "no worker group requests nvidia.com/gpu"


def test_rayjob_pods_share_storage_and_get_mlflow_from_a_secret(rayjob, rayjob_docs):
    claims = {d["metadata"]["name"]: d for d in rayjob_docs if d.get("kind") == "PersistentVolumeClaim"}
    for group, pod in _pods(rayjob).items():
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert pod["securityContext"]["runAsNonRoot"] is True, f"{group}: pods must run as non-root"
        for container in pod["containers"]:
            assert not container.get("securityContext", {}).get("privileged"), f"{group}: privileged container"
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert SHARED_RUNS in mounts, f"{group}/{container['name']}: sweep storage not mounted at {SHARED_RUNS}"
            claim = volumes[mounts[SHARED_RUNS]]["persistentVolumeClaim"]["claimName"]
            assert claim in claims and "ReadWriteMany" in claims[claim]["spec"]["accessModes"], (
                f"{group}: the sweep volume must be a ReadWriteMany PVC defined in rayjob.yaml")
            env = {e["name"]: e for e in container["env"]}
            assert "secretKeyRef" in env["MLFLOW_TRACKING_URI"]["valueFrom"], (
                f"{group}/{container['name']}: MLFLOW_TRACKING_URI must come from a Secret")


# --------------------------------------------------------------------------- cluster.yaml
def test_cluster_config_passes_rays_own_validation(cluster):
    """What `ray up` does before it contacts AWS: fill in the provider defaults, then validate
    against ray/autoscaler/ray-schema.json and the node-type rules (a private Ray API)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cluster)))


def test_cluster_has_a_gpu_worker_type(cluster):
    types = cluster["available_node_types"]
    head = cluster["head_node_type"]
    gpu_types = [name for name, t in types.items()
                 if name != head and t["resources"].get("GPU", 0) >= 1 and t["resources"].get("CPU", 0) >= 1]
    assert gpu_types, "no worker node type with GPU and CPU resources"
    for name in gpu_types:
        assert 0 <= types[name].get("min_workers", 0) <= types[name]["max_workers"] <= cluster["max_workers"]


def test_cluster_dashboard_binds_loopback(cluster):
    starts = [argv for cmd in cluster["head_start_ray_commands"]
              for argv in commands_starting_with(cmd, "ray", "start")]
    assert len(starts) == 1, "head_start_ray_commands must start Ray exactly once"
    params = ray_start_params(starts[0])
    assert params["head"] and params["dashboard_host"] == "127.0.0.1"
    assert params["autoscaling_config"], "the head needs --autoscaling-config for the autoscaler"


def test_cluster_containers_get_shared_storage_and_mlflow(cluster):
    options = " ".join(cluster["docker"]["run_options"])
    assert re.search(rf"-v \S+:{re.escape(SHARED_RUNS)}(\s|$)", options), f"no volume mounted at {SHARED_RUNS}"
    uri = re.search(r"-e MLFLOW_TRACKING_URI=(\S+)", options)
    assert uri and urlsplit(uri.group(1)).scheme in ("http", "https")
    assert cluster["docker"]["image"], "the project image must be set"
