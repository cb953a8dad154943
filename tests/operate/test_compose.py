"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

The static tests read the YAML and check what README's "Deployment with docker-compose" promises. The
integration tests then run each service's own command line (and health check) as a local process, with
the services' host names and ports swapped for local ones and `.env.example` (plus the dev-profile
settings documented at the top of docker-compose.yml) as `.env`, and check that each one starts and
serves, and that a flow runs through them.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from cli.main import COMMANDS
from tests.pipeline.flows import callback, consent
from tests.support import ROOT, Process, free_port, wait_for_http, wait_for_port
from worker.subscribe import follow_flow

COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
BIN = Path(sys.executable).parent
APP_SERVICES = {"shim", "worker", "flower", "sandbox"}
IN_COMPOSE_REDIS = "redis://redis:6379/0"

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


# --- reading the files ---------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def argv_of(command: str | list[str]) -> list[str]:
    """A compose `command` as the argv the container runs (compose splits a string shell-like)."""
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def dotenv(text: str) -> dict[str, str]:
    """`NAME=value` lines of a .env file, comments and blank lines skipped."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip().strip("'\"")
    return values


def env_example() -> dict[str, str]:
    return dotenv(ENV_EXAMPLE.read_text())


def documented_dev_env() -> dict[str, str]:
    """The `.env` lines the header of docker-compose.yml tells a user to set for the dev profile."""
    lines = re.findall(r"^#\s+([A-Z][A-Z0-9_]*=\S+)", COMPOSE_FILE.read_text(), flags=re.MULTILINE)
    return dotenv("\n".join(lines))


def interpolate(value: str, variables: Mapping[str, str]) -> str:
    """Compose's interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, $$."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(4)
        operator, argument = match.group(2), match.group(3) or ""
        present = name in variables
        set_and_not_empty = present and variables[name] != ""
        if operator in (":-", "-"):
            use_default = not set_and_not_empty if operator == ":-" else not present
            return argument if use_default else variables[name]
        if operator in (":?", "?"):
            if not (set_and_not_empty if operator == ":?" else present):
                raise ValueError(f"{name}: {argument}")
            return variables[name]
        if operator in (":+", "+"):
            return argument if (set_and_not_empty if operator == ":+" else present) else ""
        return variables.get(name, "")

    parts = value.split("$$")
    return "$".join(_VARIABLE.sub(one, part) for part in parts)


def variables_used(text: str) -> set[str]:
    """Every variable compose interpolates in the file: comments and `$$` escapes left out."""
    body = "\n".join(line.split(" #")[0] for line in text.splitlines() if not line.lstrip().startswith("#"))
    return {m.group(1) or m.group(4) for m in _VARIABLE.finditer(body.replace("$$", ""))}


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.partition("=")[::2] for item in environment)
    return {str(name): "" if value is None else str(value) for name, value in environment.items()}


def env_files_of(service: dict[str, Any]) -> list[str]:
    env_file = service.get("env_file") or []
    entries = [env_file] if isinstance(env_file, str | dict) else list(env_file)
    return [entry["path"] if isinstance(entry, dict) else str(entry) for entry in entries]


def help_text(argv: list[str]) -> str:
    answer = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert answer.returncode == 0, (argv, answer.stderr[-2000:])
    return answer.stdout


def flags(argv: list[str]) -> list[str]:
    return [part.split("=", 1)[0] for part in argv if part.startswith("-")]


def shows_flag(text: str, flag: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) is not None


# --- static checks -------------------------------------------------------------------------------------


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


# --- the same commands, run locally --------------------------------------------------------------------

_SERVICE_ADDRESS = re.compile(r"\b(localhost|127\.0\.0\.1|redis|shim|worker|flower|sandbox):(\d+)")


@dataclass
class Local:
    """Where each compose port is on this machine, and how a compose command line maps onto it."""

    ports: dict[int, int]  # container port -> local port
    redis_port: int
    tmp: str
    processes: list[Process] = field(default_factory=list)

    def text(self, value: str) -> str:
        def address(match: re.Match[str]) -> str:
            port = int(match.group(2))
            port = self.redis_port if port == 6379 else self.ports.get(port, port)
            return f"127.0.0.1:{port}"

        return _SERVICE_ADDRESS.sub(address, value)

    def argv(self, argv: list[str]) -> list[str]:
        local: list[str] = []
        for index, part in enumerate(argv):
            if index == 0 and (BIN / part).exists():
                part = str(BIN / part)  # oktopost-connect, celery, python of this virtualenv
            elif part == "0.0.0.0":
                part = "127.0.0.1"
            elif part.isdigit() and int(part) in self.ports and argv[index - 1] == "--port":
                part = str(self.ports[int(part)])
            elif part.startswith("--port="):
                part = f"--port={self.ports.get(int(part[7:]), int(part[7:]))}"
            local.append(self.text(part))
        return local

    def env(self, name: str) -> dict[str, str]:
        """The service's environment as compose would build it, with local addresses."""
        service = services()[name]
        dot_env = {**env_example(), **documented_dev_env()}  # the user's .env, dev profile
        env: dict[str, str] = {}
        for path in env_files_of(service):
            assert path == ".env", path
            env.update(dot_env)
        env.update({key: interpolate(value, dot_env) for key, value in environment_of(service).items()})
        return {key: self.text(value) for key, value in env.items()}

    def start(self, name: str, extra: list[str] | None = None) -> Process:
        argv = self.argv(argv_of(services()[name]["command"])) + (extra or [])
        process = Process(argv, env=self.env(name), name=f"compose-{name}")
        self.processes.append(process)
        return process

    def healthcheck(
        self, name: str, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        test = argv_of(services()[name]["healthcheck"]["test"])
        service_env = self.env(name) if name != "redis" else {}
        full_env = {**os.environ, **service_env, **(env or {})}
        if test[0] == "CMD-SHELL":
            # compose turns $$ into $, then the container's shell expands it
            command = self.text(interpolate(test[1], {}))
            full_env["PATH"] = f"{BIN}{os.pathsep}{full_env.get('PATH', '')}"  # this virtualenv's celery
            return subprocess.run(
                ["sh", "-c", command], env=full_env, capture_output=True, text=True, timeout=60, cwd=ROOT
            )
        assert test[0] == "CMD", test
        argv = self.argv(test[1:])
        if argv[0] == "redis-cli":
            argv[1:1] = ["-p", str(self.redis_port)]
        return subprocess.run(argv, env=full_env, capture_output=True, text=True, timeout=60, cwd=ROOT)


def wait_until(what: str, check: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except (httpx.HTTPError, redis.RedisError):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout}s")
        time.sleep(0.3)


@pytest.fixture(scope="module")
def local() -> Iterator[Local]:
    """Every compose service started from its own command line, the redis one included."""
    if subprocess.run(["which", "redis-server"], capture_output=True).returncode != 0:
        pytest.skip("redis-server is not installed")
    tmp = tempfile.mkdtemp(prefix="okc-compose-")
    stack = Local({port: free_port() for port in (8000, 5555, 8090)}, free_port(), tmp)
    redis_argv = argv_of(services()["redis"]["command"])
    stack.processes.append(
        Process(
            [*redis_argv, "--port", str(stack.redis_port), "--bind", "127.0.0.1", "--dir", tmp],
            name="compose-redis",
        )
    )
    try:
        wait_for_port(stack.redis_port)
        for name in ("sandbox", "shim", "worker"):
            stack.start(name)
        stack.start("flower", ["--address=127.0.0.1"])
        for port in stack.ports.values():
            wait_for_port(port, timeout=30)
        yield stack
    except BaseException:
        for process in stack.processes:
            print(f"--- {process.name}\n{process.output[-3000:]}")
        raise
    finally:
        for process in reversed(stack.processes):
            process.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def flower_auth() -> tuple[str, str]:
    return env_example()["FLOWER_USER"], env_example()["FLOWER_PASSWORD"]


@pytest.mark.integration
def test_redis_command_turns_on_aof_and_noeviction_and_its_healthcheck_passes(local: Local) -> None:
    client = redis.Redis(port=local.redis_port)
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
    assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    check = local.healthcheck("redis")
    assert check.returncode == 0, check
    assert check.stdout.strip() == "PONG", check


@pytest.mark.integration
def test_sandbox_command_serves(local: Local) -> None:
    answer = httpx.get(f"http://127.0.0.1:{local.ports[8090]}/_sandbox/connections", timeout=10)
    assert answer.status_code == 200
    assert isinstance(answer.json(), list)


@pytest.mark.integration
def test_shim_command_serves_and_its_healthcheck_passes(local: Local) -> None:
    shim = f"http://127.0.0.1:{local.ports[8000]}"
    wait_for_http(f"{shim}/healthz")
    assert httpx.get(f"{shim}/healthz", timeout=10).status_code == 200
    assert httpx.get(f"{shim}/readyz", timeout=10).status_code == 200  # it reaches the compose Redis
    check = local.healthcheck("shim")
    assert check.returncode == 0, check


@pytest.mark.integration
def test_flower_command_shows_the_worker_behind_basic_auth(local: Local) -> None:
    flower = f"http://127.0.0.1:{local.ports[5555]}"
    workers = wait_until(
        "Flower lists the worker",
        lambda: httpx.get(f"{flower}/api/workers?refresh=1", auth=flower_auth(), timeout=15).json(),
    )
    assert len(workers) == 1
    assert next(iter(workers)) == f"celery@{socket.gethostname()}"
    assert {"oktopost.verify", "oktopost.complete"} <= set(next(iter(workers.values()))["registered"])
    assert httpx.get(f"{flower}/api/workers", timeout=10).status_code == 401
    check = local.healthcheck("flower")
    assert check.returncode == 0, check
    assert httpx.get(f"{flower}/api/workers", auth=("admin", "wrong"), timeout=10).status_code == 401


@pytest.mark.integration
def test_worker_healthcheck_passes(local: Local) -> None:
    wait_until(
        "the worker answers Flower",
        lambda: httpx.get(
            f"http://127.0.0.1:{local.ports[5555]}/api/workers?status=1", auth=flower_auth(), timeout=15
        ).json(),
    )
    check = local.healthcheck("worker", {"HOSTNAME": socket.gethostname()})
    assert check.returncode == 0, check
    assert "pong" in check.stdout, check


@pytest.mark.integration
def test_a_flow_completes_through_the_compose_services(local: Local) -> None:
    """The dev profile as documented: shim, worker and sandbox as compose configures them."""
    shim = f"http://127.0.0.1:{local.ports[8000]}"
    flower = f"http://127.0.0.1:{local.ports[5555]}"
    wait_for_http(f"{shim}/healthz")
    # Flower's event receiver is up once it has a heartbeat: then it misses none of the flow's tasks.
    wait_until(
        "Flower sees the worker's heartbeat",
        lambda: any(
            httpx.get(f"{flower}/api/workers?status=1", auth=flower_auth(), timeout=15).json().values()
        ),
    )
    env = local.env("shim")
    key = env["SHIM_API_KEYS"].split(",")[0]
    return_url = env["ALLOWED_RETURN_URLS"].split(",")[0] + "/done"
    created = httpx.post(
        f"{shim}/v1/authorizations",
        json={"network": "LinkedIn", "return_url": return_url},
        headers={"Authorization": f"Bearer {key}"},
        timeout=15,
    )
    assert created.status_code == 201, created.text
    flow_id = created.json()["flow_id"]
    redirect = created.json()["redirect_url"]
    # The consent page is on the sandbox's --public-url, where a browser on the host reaches it.
    assert redirect.startswith(f"http://127.0.0.1:{local.ports[8090]}/oauth/authorize"), redirect
    answer = callback(consent(redirect))
    assert answer.status_code == 303, answer.text

    client = redis.Redis(port=local.redis_port)
    events = list(follow_flow(client, flow_id, env["CHANNEL_PREFIX"], timeout=30))
    assert events, events
    assert events[-1]["type"] == "connection.completed", events

    def verify_task_done() -> bool:
        tasks = httpx.get(f"{flower}/api/tasks", auth=flower_auth(), timeout=15).json()
        return any(
            t["name"] == "oktopost.verify" and t["args"] == repr([flow_id]) and t["state"] == "SUCCESS"
            for t in tasks.values()
        )

    wait_until("Flower lists the flow's verify task as done", verify_task_done)
