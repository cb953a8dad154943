"""docker-compose.yml, the Dockerfile and .dockerignore, read without a Docker engine: what README's
"Deployment with docker-compose" promises."""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import COMMANDS
from tests.operate.compose_spec import (
    COMPOSE_FILE,
    ENV_EXAMPLE,
    argv_of,
    compose,
    documented_dev_env,
    env_example,
    env_files_of,
    environment_of,
    interpolate,
    services,
    variables_used,
)
from tests.support import ROOT

APP_SERVICES = {"shim", "worker", "flower", "sandbox"}
IN_COMPOSE_REDIS = "redis://redis:6379/0"


def help_text(argv: list[str]) -> str:
    answer = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert answer.returncode == 0, (argv, answer.stderr[-2000:])
    return answer.stdout


def flags(argv: list[str]) -> list[str]:
    return [part.split("=", 1)[0] for part in argv if part.startswith("-")]


def shows_flag(text: str, flag: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) is not None


def test_compose_has_the_documented_services() -> None:
    assert set(services()) == {"redis", *APP_SERVICES}


@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_every_command_is_a_real_oktopost_connect_or_celery_command(name: str) -> None:
    argv = argv_of(services()[name]["command"])
    if argv[0] == "oktopost-connect":
        command = argv[1]
        assert command in COMMANDS, f"{name}: no sub-command {command!r}"
        text = help_text([sys.executable, "-m", "cli", command, "--help"])
        for flag in flags(argv[2:]):
            assert shows_flag(text, flag), f"{name}: `oktopost-connect {command}` has no {flag}"
    else:
        assert argv[:4] == ["celery", "-A", "worker", "flower"], f"{name}: {argv}"
        from flower.options import default_options

        for flag in flags(argv[4:]):
            assert flag.lstrip("-").replace("-", "_") in default_options, f"{name}: Flower has no {flag}"


def test_the_commands_are_the_documented_ones() -> None:
    argv = {name: argv_of(service["command"]) for name, service in services().items()}
    assert argv["shim"] == ["oktopost-connect", "shim", "--host", "0.0.0.0", "--port", "8000"]
    assert argv["worker"][:4] == ["oktopost-connect", "worker", "--concurrency", "8"]
    assert argv["sandbox"][:6] == ["oktopost-connect", "sandbox", "--host", "0.0.0.0", "--port", "8090"]
    assert argv["flower"][:5] == ["celery", "-A", "worker", "flower", "--port=5555"]


def test_app_services_run_the_projects_image() -> None:
    for name in APP_SERVICES:
        service = services()[name]
        assert service["build"] == ".", name
        assert service["image"].startswith("oktopost-connect"), name


def test_redis_keeps_its_data_and_is_health_checked() -> None:
    redis_service = services()["redis"]
    assert redis_service["image"] == "redis:7"
    argv = argv_of(redis_service["command"])
    assert argv[0] == "redis-server"
    options = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert options["--appendonly"] == "yes"
    assert options["--appendfsync"] == "everysec"
    assert options["--maxmemory-policy"] == "noeviction"
    assert any(volume.split(":")[1] == "/data" for volume in redis_service["volumes"])
    volume_name = next(v.split(":")[0] for v in redis_service["volumes"] if v.split(":")[1] == "/data")
    assert volume_name in compose()["volumes"], "/data is not a named volume"
    assert argv_of(redis_service["healthcheck"]["test"])[-2:] == ["redis-cli", "ping"]


def test_app_services_wait_for_a_healthy_redis_and_use_it() -> None:
    for name in ("shim", "worker", "flower"):
        service = services()[name]
        assert service["depends_on"]["redis"]["condition"] == "service_healthy", name
        environment = environment_of(service)
        assert environment["REDIS_URL"] == IN_COMPOSE_REDIS, name
        assert environment.get("CELERY_BROKER_URL", IN_COMPOSE_REDIS) == IN_COMPOSE_REDIS, name
    assert env_files_of(services()["shim"]) == [".env"]
    assert env_files_of(services()["worker"]) == [".env"]


def test_shim_publishes_8000_and_is_health_checked_on_healthz() -> None:
    shim = services()["shim"]
    assert "8000:8000" in [str(port) for port in shim["ports"]]
    assert "/healthz" in " ".join(argv_of(shim["healthcheck"]["test"]))


def test_worker_can_scale() -> None:
    worker = services()["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert "hostname" not in worker
    # The Celery node name must differ between replicas: the default, celery@<container hostname>.
    assert not {"--hostname", "-n"} & set(flags(argv_of(worker["command"])))


def test_sandbox_runs_only_in_the_dev_profile() -> None:
    assert services()["sandbox"]["profiles"] == ["dev"]
    assert all("profiles" not in service for name, service in services().items() if name != "sandbox")
    assert "8090:8090" in [str(port) for port in services()["sandbox"]["ports"]]
    assert documented_dev_env()["OKTOPOST_BASE_URL"] == "http://sandbox:8090"


def test_flower_has_basic_auth_from_the_environment_and_no_secrets() -> None:
    flower = services()["flower"]
    assert "5555:5555" in [str(port) for port in flower["ports"]]
    argv = argv_of(flower["command"])
    auth = [part.split("=", 1)[1] for part in argv if part.startswith("--basic-auth=")]
    auth += (
        [environment_of(flower)["FLOWER_BASIC_AUTH"]] if "FLOWER_BASIC_AUTH" in environment_of(flower) else []
    )
    assert len(auth) == 1, "Flower needs exactly one Basic-auth setting"
    assert variables_used(auth[0]) == {"FLOWER_USER", "FLOWER_PASSWORD"}
    assert (
        interpolate(auth[0], env_example())
        == f"{env_example()['FLOWER_USER']}:{env_example()['FLOWER_PASSWORD']}"
    )
    with pytest.raises(ValueError, match="FLOWER_PASSWORD"):  # a missing password stops compose
        interpolate(auth[0], {"FLOWER_USER": "admin"})
    # Flower needs the broker, never the Oktopost key or the callers' keys.
    assert not env_files_of(flower)
    assert not {"OKTOPOST_API_KEY", "SHIM_API_KEYS"} & set(environment_of(flower))


def test_every_variable_used_is_in_env_example() -> None:
    used = variables_used(COMPOSE_FILE.read_text())
    assert used, "expected ${FLOWER_USER} and ${FLOWER_PASSWORD} at least"
    listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), flags=re.MULTILINE))
    assert used <= listed, f"not in .env.example: {sorted(used - listed)}"
    assert set(documented_dev_env()) <= listed


def test_dockerfile() -> None:
    lines = [
        line.strip()
        for line in (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    instructions = [line.split()[0].upper() for line in lines]
    assert lines[0] == "FROM python:3.11-slim"
    assert "ENTRYPOINT" not in instructions
    assert any("pip install --no-cache-dir ." in line for line in lines if line.startswith("RUN"))
    user_at = max(i for i, word in enumerate(instructions) if word == "USER")
    assert lines[user_at].split()[1] not in ("root", "0", "0:0")
    assert "RUN" not in instructions[user_at:], "something runs as root after USER"
    # Every COPY source exists and is in the build context; the context has what the package needs.
    sources = [part for line in lines if line.startswith("COPY") for part in line.split()[1:-1]]
    assert {"pyproject.toml", "README.md", "celeryconfig.py", "worker", "api_shim", "sandbox"} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), source
        assert in_build_context(source), f"{source} is excluded by .dockerignore"


def in_build_context(path: str) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or one of its parents wins."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        matches = any(
            fnmatch.fnmatchcase(candidate, pattern)
            or (pattern.startswith("**/") and fnmatch.fnmatchcase(candidate, pattern[3:]))
            for candidate in candidates
        )
        if matches:
            included = negate
    return included


def test_dockerignore_keeps_secrets_and_clutter_out() -> None:
    for path in (".env", ".git/config", ".venv/bin/python", "tests/conftest.py", "worker/__pycache__/x.pyc"):
        assert not in_build_context(path), path
    for path in (
        "worker/tasks.py",
        "worker/transition.lua",
        "worker/schema/event.schema.json",
        "sandbox/consent.html",
        "cli/main.py",
        "LICENSE",
    ):
        assert in_build_context(path), path
