"""Deployment files: docker-compose.yml against the compose specification, and the two Dockerfiles.

No docker engine and no network are needed: the compose file is validated with check-jsonschema's vendored
compose-spec schema (ENV.md), its structure is read with PyYAML, and the Dockerfiles are parsed line by line.
"""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE_GPU = ROOT / "docker" / "Dockerfile"
DOCKERFILE_CPU = ROOT / "docker" / "Dockerfile.cpu"
DOCKERIGNORE = ROOT / ".dockerignore"


# --------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------


def check_compose(path: Path) -> subprocess.CompletedProcess[str]:
    """Validate ``path`` against the compose specification, as CI does."""
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: Any, env: dict[str, str] | None = None) -> str:
    """Compose-style ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` interpolation (no nesting)."""
    env = env or {}

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group("name"), m.group("op") or "", m.group("arg") or ""
        if name in env and (env[name] or not op.startswith(":")):
            return env[name]
        if op.endswith("-"):
            return arg
        if op.endswith("?"):
            raise LookupError(f"{name}: {arg}")
        return ""

    return _VAR.sub(sub, str(value))


_PORT = re.compile(
    r"^(?:(?P<ip>[0-9.]+|\[[0-9a-fA-F:]+\]):)?(?P<host>\d+(?:-\d+)?):(?P<container>\d+(?:-\d+)?)"
    r"(?:/(?P<proto>tcp|udp))?$"
)


def port_range(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    return int(lo), int(hi or lo)


def udp_mappings(
    service: dict[str, Any], env: dict[str, str]
) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(host range, container range) of every published UDP port entry of ``service``."""
    out = []
    for entry in service.get("ports", []):
        assert isinstance(entry, str), f"use the short port syntax so the range is explicit: {entry!r}"
        m = _PORT.match(interpolate(entry, env))
        assert m, f"unparsable port entry {entry!r}"
        if m.group("proto") == "udp":
            out.append((port_range(m.group("host")), port_range(m.group("container"))))
    return out


def service_env(service: dict[str, Any]) -> dict[str, Any]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    assert isinstance(env, dict)
    return env


def parse_dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, f"{path.name} ends inside a continued line"
    return instructions


def expand_args(instructions: list[tuple[str, str]], text: str) -> str:
    """Substitute ``${NAME}`` / ``$NAME`` with the defaults of the Dockerfile's ARG instructions."""
    defaults: dict[str, str] = {}
    for keyword, args in instructions:
        if keyword == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            defaults[name.strip()] = value.strip().strip('"')
    for name, value in defaults.items():
        text = text.replace("${" + name + "}", value).replace("$" + name, value)
    return text


def env_of(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in instructions:
        if keyword == "ENV":
            for token in shlex.split(args):
                name, _, value = token.partition("=")
                env[name] = value
    return env


def duration_s(text: str) -> float:
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"bad duration {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


# --------------------------------------------------------------------------------------------------------
# compose: validation against the specification, and that the check can fail
# --------------------------------------------------------------------------------------------------------


def test_check_jsonschema_is_installed() -> None:
    # A missing module would make every "broken copy fails" test pass for the wrong reason.
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--version"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_compose_file_validates_against_compose_spec() -> None:
    result = check_compose(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok" in result.stdout.lower()


def _misspell_condition(d: dict[str, Any]) -> None:
    d["services"]["server"]["depends_on"]["redis"]["condition"] = "service_healty"


def _unknown_service_key(d: dict[str, Any]) -> None:
    d["services"]["server"]["portz"] = ["8000:8000"]


def _ports_as_mapping(d: dict[str, Any]) -> None:
    d["services"]["server"]["ports"] = {"nonsense": "8000:8000"}


def _unknown_top_level_key(d: dict[str, Any]) -> None:
    d["servicez"] = d.pop("services")


def _gpu_count_as_list(d: dict[str, Any]) -> None:
    d["services"]["server"]["deploy"]["resources"]["reservations"]["devices"][0]["count"] = ["all"]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_misspell_condition, "'service_healty' is not one of"),
        (_unknown_service_key, "'portz' was unexpected"),
        (_ports_as_mapping, "is not of type 'array'"),
        (_unknown_top_level_key, "'servicez' does not match any of the regexes"),
        (_gpu_count_as_list, "is not of type 'string', 'integer'"),
    ],
    ids=[
        "depends_on-condition-misspelt",
        "unknown-service-key",
        "ports-as-mapping",
        "unknown-top-level-key",
        "gpu-count-list",
    ],
)
def test_broken_copy_fails_validation(
    tmp_path: Path, mutate: Callable[[dict[str, Any]], None], expected: str
) -> None:
    data = load_compose()
    broken = copy.deepcopy(data)
    mutate(broken)
    assert broken != data
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken, sort_keys=False))
    result = check_compose(path)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Schema validation errors were encountered" in output, output
    assert expected in output, output


def test_textual_break_of_the_real_file_fails(tmp_path: Path) -> None:
    # Same file, anchors and comments intact, one word misspelt: the validator must catch it.
    text = COMPOSE.read_text()
    assert "condition: service_healthy" in text
    path = tmp_path / "docker-compose.yml"
    path.write_text(text.replace("condition: service_healthy", "condition: service_healthy_please"))
    result = check_compose(path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "service_healthy_please" in result.stdout


# --------------------------------------------------------------------------------------------------------
# compose: structure
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    assert set(compose["services"]) >= {"redis", "server", "server-cpu"}
    return compose["services"]


def test_redis_has_a_ping_healthcheck(services: dict[str, Any]) -> None:
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    test = redis["healthcheck"]["test"]
    command = " ".join(test) if isinstance(test, list) else test
    assert "redis-cli" in command
    assert "ping" in command


@pytest.mark.parametrize("name", ["server", "server-cpu"])
def test_server_waits_for_healthy_redis(services: dict[str, Any], name: str) -> None:
    depends = services[name]["depends_on"]
    assert depends["redis"]["condition"] == "service_healthy"
    url = interpolate(service_env(services[name])["LIPAR_REDIS_URL"])
    assert url == "redis://redis:6379/0"


def test_server_reserves_gpus(services: dict[str, Any]) -> None:
    devices = services["server"]["deploy"]["resources"]["reservations"]["devices"]
    gpu = [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])]
    assert gpu, devices
    assert "count" in gpu[0] or "device_ids" in gpu[0]


def test_gpu_server_is_default_and_cpu_server_is_opt_in(services: dict[str, Any]) -> None:
    assert "profiles" not in services["server"], "plain `docker compose up` must start the GPU server"
    assert "profiles" not in services["redis"]
    cpu = services["server-cpu"]
    assert cpu["profiles"] == ["cpu"]
    assert cpu["build"]["dockerfile"] == "docker/Dockerfile.cpu"
    assert "deploy" not in cpu, "the cpu service must not reserve GPUs"
    env = service_env(cpu)
    assert interpolate(env["LIPAR_CONFIG"]) == "tiny"
    assert interpolate(env["LIPAR_DEVICES"]) == "cpu"


def test_gpu_server_defaults(services: dict[str, Any]) -> None:
    server = services["server"]
    assert server["build"]["dockerfile"] == "docker/Dockerfile"
    env = service_env(server)
    assert interpolate(env["LIPAR_CONFIG"]) == "self-forcing-1.3b"
    assert interpolate(env["LIPAR_DEVICES"]).startswith("cuda")


@pytest.mark.parametrize("name", ["server", "server-cpu"])
def test_build_files_exist(services: dict[str, Any], name: str) -> None:
    build = services[name]["build"]
    assert (ROOT / build["context"] / build["dockerfile"]).is_file()


@pytest.mark.parametrize("name", ["server", "server-cpu"])
@pytest.mark.parametrize(
    "env",
    [{}, {"LIPAR_RTC_PORT_MIN": "50000", "LIPAR_RTC_PORT_MAX": "50019"}],
    ids=["defaults", "custom-range"],
)
def test_published_udp_range_matches_server_setting(
    services: dict[str, Any], name: str, env: dict[str, str]
) -> None:
    service = services[name]
    settings = service_env(service)
    lo = int(interpolate(settings["LIPAR_RTC_PORT_MIN"], env))
    hi = int(interpolate(settings["LIPAR_RTC_PORT_MAX"], env))
    assert 1024 < lo <= hi <= 65535
    mappings = udp_mappings(service, env)
    assert len(mappings) == 1, mappings
    host, container = mappings[0]
    # ICE advertises the container's ports: the host side must use the same numbers.
    assert host == container == (lo, hi)
    if not env:
        assert (lo, hi) == (40000, 40099)


@pytest.mark.parametrize("name", ["server", "server-cpu"])
def test_http_port_published(services: dict[str, Any], name: str) -> None:
    service = services[name]
    assert interpolate(service_env(service)["LIPAR_PORT"]) == "8000"
    assert interpolate(service_env(service)["LIPAR_HOST"]) == "0.0.0.0"
    tcp = [interpolate(p) for p in service["ports"] if not str(p).endswith("/udp")]
    assert "8000:8000" in tcp


@pytest.mark.parametrize("name", ["server", "server-cpu"])
def test_api_token_is_required(services: dict[str, Any], name: str) -> None:
    token = service_env(services[name])["LIPAR_API_TOKEN"]
    assert re.fullmatch(r"\$\{LIPAR_API_TOKEN:\?[^}]+\}", token), token
    with pytest.raises(LookupError, match="LIPAR_API_TOKEN"):
        interpolate(token)
    assert interpolate(token, {"LIPAR_API_TOKEN": "s3cret"}) == "s3cret"


@pytest.mark.parametrize("name", ["server", "server-cpu"])
def test_model_cache_volume(compose: dict[str, Any], services: dict[str, Any], name: str) -> None:
    service = services[name]
    assert "models:/models" in service["volumes"]
    assert "models" in compose["volumes"]
    assert service_env(service)["HF_HOME"] == "/models"


@pytest.mark.parametrize("name", ["server", "server-cpu"])
def test_recordings_volume(compose: dict[str, Any], services: dict[str, Any], name: str) -> None:
    """Recordings go to a named volume (kept ones outlive the container), at the folder the images create
    for the unprivileged user."""
    service = services[name]
    assert "recordings:/recordings" in service["volumes"]
    assert "recordings" in compose["volumes"]
    assert service_env(service)["LIPAR_RECORDINGS_DIR"] == "/recordings"
    for dockerfile in ("Dockerfile", "Dockerfile.cpu"):
        text = (ROOT / "docker" / dockerfile).read_text()
        assert re.search(r"mkdir -p [^\n]*/recordings", text) and re.search(
            r"chown lipar:lipar [^\n]*/recordings", text
        )


@pytest.mark.parametrize("name", ["server", "server-cpu"])
def test_server_healthcheck_hits_readyz(services: dict[str, Any], name: str) -> None:
    check = services[name]["healthcheck"]
    assert check["test"][0] in ("CMD", "CMD-SHELL")
    assert any("/readyz" in part for part in check["test"])
    assert duration_s(check["start_period"]) >= 60


def test_gpu_start_period_allows_first_download(services: dict[str, Any]) -> None:
    assert duration_s(services["server"]["healthcheck"]["start_period"]) >= 15 * 60


@pytest.mark.parametrize("name", ["server", "server-cpu"])
def test_shared_memory_is_enlarged(services: dict[str, Any], name: str) -> None:
    # Frames cross process boundaries through /dev/shm; Docker's default is 64 MB.
    size = interpolate(services[name]["shm_size"]).lower()
    m = re.fullmatch(r"(\d+)([kmg])b?", size)
    assert m, size
    assert int(m.group(1)) * {"k": 1 / 1024, "m": 1, "g": 1024}[m.group(2)] >= 512


# --------------------------------------------------------------------------------------------------------
# Dockerfiles
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [DOCKERFILE_GPU, DOCKERFILE_CPU], ids=["gpu", "cpu"])
def test_healthcheck_hits_readyz(path: Path) -> None:
    checks = [args for keyword, args in parse_dockerfile(path) if keyword == "HEALTHCHECK"]
    assert len(checks) == 1, checks
    assert "/readyz" in checks[0]
    assert "127.0.0.1:" in checks[0]
    m = re.search(r"--start-period=(\S+)", checks[0])
    assert m, checks[0]
    assert duration_s(m.group(1)) >= 60


@pytest.mark.parametrize("path", [DOCKERFILE_GPU, DOCKERFILE_CPU], ids=["gpu", "cpu"])
def test_runs_as_non_root_user(path: Path) -> None:
    instructions = parse_dockerfile(path)
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users, "no USER instruction: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert any(keyword == "RUN" and "useradd" in args and user in args for keyword, args in instructions)
    # USER comes after the last RUN that installs things, before the CMD
    keywords = [keyword for keyword, _ in instructions]
    last_user = len(keywords) - 1 - keywords[::-1].index("USER")
    assert "RUN" not in keywords[last_user:]
    assert keywords.index("CMD") > last_user


@pytest.mark.parametrize(
    ("path", "preset"), [(DOCKERFILE_GPU, "self-forcing-1.3b"), (DOCKERFILE_CPU, "tiny")], ids=["gpu", "cpu"]
)
def test_runtime_settings(path: Path, preset: str) -> None:
    instructions = parse_dockerfile(path)
    env = env_of(instructions)
    assert env["HF_HOME"] == "/models"
    assert env["LIPAR_CONFIG"] == preset
    assert env["LIPAR_HOST"] == "0.0.0.0"
    volumes = " ".join(args for keyword, args in instructions if keyword == "VOLUME")
    assert "/models" in volumes
    exposed = " ".join(args for keyword, args in instructions if keyword == "EXPOSE").split()
    assert "8000" in exposed
    udp = f"{env['LIPAR_RTC_PORT_MIN']}-{env['LIPAR_RTC_PORT_MAX']}/udp"
    assert udp in exposed, (udp, exposed)
    cmd = [args for keyword, args in instructions if keyword == "CMD"]
    assert cmd and "lipar-server" in cmd[-1]


def _pip_installs(instructions: list[tuple[str, str]]) -> list[str]:
    """Every ``pip install ...`` command of every RUN, in order, with ARG defaults substituted."""
    out = []
    for keyword, args in instructions:
        if keyword == "RUN":
            for part in re.split(r"&&|;", expand_args(instructions, args)):
                if re.search(r"\bpip install\b", part):
                    out.append(part.strip())
    return out


def _package_install_index(installs: list[str]) -> int:
    for i, cmd in enumerate(installs):
        if re.search(r"pip install\b.*\s(-e\s+)?(/app|\.)(\s|$)", cmd):
            return i
    raise AssertionError(f"the package itself is never installed: {installs}")


def test_cpu_image_pins_cpu_torch_first() -> None:
    instructions = parse_dockerfile(DOCKERFILE_CPU)
    base = [args for keyword, args in instructions if keyword == "FROM"]
    assert "python:3.11-slim" in expand_args(instructions, base[0])
    installs = _pip_installs(instructions)
    torch = [i for i, cmd in enumerate(installs) if "torch==" in cmd]
    assert torch, installs
    first = installs[torch[0]]
    assert "torch==2.13.0" in first
    assert "download.pytorch.org/whl/cpu" in first
    assert torch[0] < _package_install_index(installs)


def test_gpu_image_installs_cuda_torch_first() -> None:
    instructions = parse_dockerfile(DOCKERFILE_GPU)
    bases = [
        expand_args(instructions, args).split()[0] for keyword, args in instructions if keyword == "FROM"
    ]
    for base in bases:
        if base in ("builder", "runtime"):
            continue
        assert base.startswith("nvidia/cuda:"), base
        tag = base.split(":", 1)[1]
        assert re.match(r"\d+\.\d+\.\d+-", tag), f"pin the CUDA base to a full version: {base}"
        assert "runtime" in tag or "base" in tag
    installs = _pip_installs(instructions)
    torch = [i for i, cmd in enumerate(installs) if re.search(r"torch==\d", cmd)]
    assert torch, installs
    first = installs[torch[0]]
    m = re.search(r"torch==(\d+)\.(\d+)\.(\d+)", first)
    assert m, first
    assert (int(m.group(1)), int(m.group(2))) >= (2, 8)
    index = re.search(r"download\.pytorch\.org/whl/(cu\d+)", first)
    assert index, f"the GPU image must install torch from a CUDA index: {first}"
    assert torch[0] < _package_install_index(installs)
    # the build asserts that the installed torch really is a CUDA build
    assert any(keyword == "RUN" and "torch.version.cuda" in args for keyword, args in instructions), (
        "no build-time check that torch is a CUDA build"
    )


def test_dockerignore_keeps_the_context_small() -> None:
    entries = {line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip()}
    for needed in (".git", ".venv", "bench/results", "**/__pycache__", ".env"):
        assert needed in entries, needed
    for kept in ("lipar_core", "server", "configs", "client_web", "pyproject.toml"):
        assert kept not in entries, kept


# --------------------------------------------------------------------------------------------------------
# CI entry point
# --------------------------------------------------------------------------------------------------------

CI_RUN = ROOT / ".ci" / "run"


def test_ci_script_parses_and_validates_the_compose_file() -> None:
    result = subprocess.run(["bash", "-n", str(CI_RUN)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    text = CI_RUN.read_text()
    assert "set -Eeuo pipefail" in text
    assert "DEBIAN_FRONTEND=noninteractive" in text
    assert text.index('apt-get "${APT_OPTS[@]}" update') < text.index("apt-get install")
    assert "check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml" in text
    assert "torch==2.13.0" in text
    assert re.search(r'"\$rc" -eq 5', text), "pytest's exit 5 (no tests) must be reported as a failure"
