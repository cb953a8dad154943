"""docker-compose.yml, the Dockerfile and .dockerignore, read without a Docker engine: what
docs/operations.md's "Deployment with docker-compose" promises."""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from cli.main import COMMANDS
from tests.support.compose_spec import (
    COMPOSE_FILE,
    DEPLOYER_SECRETS,
    ENV_EXAMPLE,
    argv_of,
    compose,
    deployer_env,
    directives,
    documented_dev_env,
    env_example,
    env_files_of,
    environment_of,
    interpolate,
    interpolated,
    services,
    variables_used,
)
from tests.support.processes import ROOT, promtool
from worker.config.settings import ConfigError, load_settings

APP_SERVICES = {"shim", "worker", "flower", "sandbox"}
HA_SERVICES = {"redis-replica", "redis-sentinel-1", "redis-sentinel-2", "redis-sentinel-3"}


def help_text(argv: list[str]) -> str:
    answer = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert answer.returncode == 0, (argv, answer.stderr[-2000:])
    return answer.stdout


def flags(argv: list[str]) -> list[str]:
    return [part.split("=", 1)[0] for part in argv if part.startswith("-")]


def shows_flag(text: str, flag: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) is not None


def test_compose_has_the_documented_services() -> None:
    assert set(services()) == {"redis", "prometheus", *APP_SERVICES, *HA_SERVICES}


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


def test_redis_keeps_its_data_within_a_memory_bound_and_is_health_checked() -> None:
    redis_service = services()["redis"]
    assert redis_service["image"] == "redis:7"
    argv = argv_of(redis_service["command"], deployer_env())
    assert argv[0] == "redis-server"
    options = {name: values for name, values in directives(argv) if name != "user"}
    assert options["appendonly"] == ["yes"]
    assert options["appendfsync"] == ["everysec"]
    assert options["maxmemory"] == [env_example()["REDIS_MAXMEMORY"]]
    assert options["maxmemory-policy"] == ["noeviction"]
    assert any(volume.split(":")[1] == "/data" for volume in redis_service["volumes"])
    volume_name = next(v.split(":")[0] for v in redis_service["volumes"] if v.split(":")[1] == "/data")
    assert volume_name in compose()["volumes"], "/data is not a named volume"
    assert "redis-cli --user pipeline ping" in " ".join(argv_of(redis_service["healthcheck"]["test"]))


def test_redis_has_no_default_user_and_a_password_for_each_of_its_users() -> None:
    users = {
        values[0]: values[1:]
        for name, values in directives(argv_of(services()["redis"]["command"], deployer_env()))
        if name == "user"
    }
    assert set(users) == {"default", "pipeline", "subscriber", "replication", "sentinel"}
    assert users["default"] == ["off"]
    for name in ("replication", "sentinel"):  # the ha profile's: the pipeline's password, few commands
        assert "on" in users[name], name
        assert [rule for rule in users[name] if rule.startswith(">")] == [
            f">{DEPLOYER_SECRETS['REDIS_PIPELINE_PASSWORD']}"
        ], name
        assert "-@all" in users[name], name
        assert not [rule for rule in users[name] if rule.startswith(("~", "+@", "&"))], name
    assert {rule for rule in users["replication"] if rule.startswith("+")} == {"+psync", "+replconf", "+ping"}
    for name in ("pipeline", "subscriber"):
        assert "on" in users[name], name
        password = DEPLOYER_SECRETS[f"REDIS_{name.upper()}_PASSWORD"]
        assert [rule for rule in users[name] if rule.startswith(">")] == [f">{password}"], name
        assert "nopass" not in users[name], name


@pytest.mark.parametrize(
    "missing", ["REDIS_PIPELINE_PASSWORD", "REDIS_SUBSCRIBER_PASSWORD", "FLOWER_PASSWORD"]
)
def test_compose_refuses_to_start_without_a_password(missing: str) -> None:
    with pytest.raises(ValueError, match=missing):
        interpolated(compose(), {**deployer_env(), missing: ""})


def test_compose_refuses_to_start_with_env_example_as_it_is() -> None:
    """The Redis passwords are empty there: compose stops before anything runs."""
    with pytest.raises(ValueError, match="REDIS_PIPELINE_PASSWORD"):
        interpolated(compose(), env_example())


@pytest.mark.parametrize("setting", ["SHIM_API_KEYS", "FLOWER_PASSWORD"])
def test_the_placeholders_of_env_example_are_refused_at_start_up(setting: str) -> None:
    """What the shim, the workers and Flower check as they start (each one refusing is in test_compose)."""
    env = {**deployer_env(), setting: env_example()[setting]}
    flower_auth = interpolate(environment_of(services()["flower"])["FLOWER_BASIC_AUTH"], env)
    with pytest.raises(
        ConfigError, match="SHIM_API_KEYS" if setting == "SHIM_API_KEYS" else "FLOWER_BASIC_AUTH"
    ):
        load_settings(shim_api_keys=env["SHIM_API_KEYS"], flower_basic_auth=flower_auth)


def test_the_documented_dev_settings_pass_the_start_up_checks() -> None:
    """The dev profile calls the sandbox over plain http: the header of docker-compose.yml allows its host."""
    env = {**deployer_env(), "REDIS_URL": "redis://redis:6379/0"}
    settings = {
        name.lower(): value for name, value in env.items() if not name.startswith(("FLOWER", "REDIS_"))
    }
    assert load_settings(**settings).oktopost_base_url == "http://sandbox:8090"
    with pytest.raises(ConfigError, match="OKTOPOST_BASE_URL"):
        load_settings(**{**settings, "allow_http_hosts": ""})


def test_app_services_wait_for_a_healthy_redis_and_use_it_as_the_pipeline_user() -> None:
    password = DEPLOYER_SECRETS["REDIS_PIPELINE_PASSWORD"]
    in_compose = f"redis://pipeline:{password}@redis:6379/0"
    for name in ("shim", "worker", "flower"):
        service = services()[name]
        assert service["depends_on"]["redis"]["condition"] == "service_healthy", name
        environment = {
            key: interpolate(value, deployer_env()) for key, value in environment_of(service).items()
        }
        assert environment["REDIS_URL"] == in_compose, name
        assert environment.get("CELERY_BROKER_URL", in_compose) == in_compose, name
    assert env_files_of(services()["shim"]) == [".env"]
    assert env_files_of(services()["worker"]) == [".env"]


def test_only_the_shim_is_published_beyond_the_hosts_loopback() -> None:
    published = {
        name: [str(port) for port in service.get("ports", [])] for name, service in services().items()
    }
    assert published["shim"] == ["8000:8000"]
    assert published["flower"] == ["127.0.0.1:5555:5555"]
    assert published["sandbox"] == ["127.0.0.1:8090:8090"]
    assert "ports" not in services()["redis"]
    assert "ports" not in services()["worker"]
    assert published["prometheus"] == ["127.0.0.1:9090:9090"]


def test_prometheus_scrapes_the_shim_with_the_metrics_token() -> None:
    import yaml

    assert environment_of(services()["shim"])["METRICS_TOKEN"].startswith("${METRICS_TOKEN:?")
    assert services()["prometheus"]["secrets"] == ["metrics_token"]
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["static_configs"] == [{"targets": ["shim:8000"]}]
    assert job["authorization"] == {"type": "Bearer", "credentials_file": "/run/secrets/metrics_token"}


def test_prometheus_loads_the_alert_rules_as_compose_mounts_them(tmp_path: Path) -> None:
    """The container's /etc/prometheus laid out from compose's volumes, with each file's paths under
    it: promtool checks the configuration and the rule file it names."""
    import yaml

    etc = tmp_path / "etc" / "prometheus"
    etc.mkdir(parents=True)
    mounted = {}
    for volume in services()["prometheus"]["volumes"]:
        source, target, _ = volume.split(":")
        mounted[target] = source
        (tmp_path / target.lstrip("/")).write_text((ROOT / source).read_text())
    assert mounted["/etc/prometheus/alerts.yml"] == "./deploy/prometheus/alerts.yml"
    config_path = tmp_path / "etc/prometheus/prometheus.yml"
    config = yaml.safe_load(config_path.read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    config["rule_files"] = [str(tmp_path / name.lstrip("/")) for name in config["rule_files"]]
    token = tmp_path / "metrics_token"
    token.write_text("a-token")
    config["scrape_configs"][0]["authorization"]["credentials_file"] = str(token)
    config_path.write_text(yaml.safe_dump(config))
    checked = subprocess.run(
        [promtool(), "check", "config", str(config_path)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout + checked.stderr
    assert "rules found" in checked.stdout + checked.stderr


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


def test_the_ha_profile_runs_a_replica_of_redis_and_three_sentinels_watching_it() -> None:
    env = deployer_env()
    replica = services()["redis-replica"]
    for name in HA_SERVICES:
        assert services()[name]["profiles"] == ["ha"], name
        assert services()[name]["image"] == services()["redis"]["image"], name
        assert "ports" not in services()[name], name
    # the replica is the same server as redis (persistence, memory bound, users), replicating it
    assert replica["command"] == services()["redis"]["command"]
    script = " ".join(replica["entrypoint"])
    assert "--replicaof redis 6379 --masteruser replication" in script
    assert replica["environment"]["REDISCLI_AUTH"] == services()["redis"]["environment"]["REDISCLI_AUTH"]
    assert any(volume.split(":")[1] == "/data" for volume in replica["volumes"])
    for index in (1, 2, 3):
        sentinel = interpolated(services()[f"redis-sentinel-{index}"], env)
        config = " ".join(sentinel["command"])
        assert "'sentinel monitor okc redis 6379 2'" in config  # two of the three agree on a failover
        assert "'sentinel auth-user okc sentinel'" in config
        assert "--sentinel" in config
        assert sentinel["environment"]["SENTINEL_AUTH"] == env["REDIS_PIPELINE_PASSWORD"]


def test_the_ha_settings_documented_at_the_top_pass_the_start_up_checks() -> None:
    header = COMPOSE_FILE.read_text().split("services:", 1)[0]
    documented = dict(re.findall(r"(REDIS_[A-Z_]+)=(\S+)", header))
    assert {"REDIS_SENTINELS", "REDIS_SENTINEL_MASTER", "REDIS_WAIT_REPLICAS"} <= set(documented)
    hosts = {address.split(":")[0] for address in documented["REDIS_SENTINELS"].split(",")}
    assert hosts == {name for name in HA_SERVICES if "sentinel" in name}
    loaded = load_settings(**{name.lower(): value for name, value in documented.items()})
    assert loaded.broker_url.startswith("sentinel://")


def test_flower_finds_the_broker_through_the_sentinels_with_the_ha_settings_and_directly_without() -> None:
    header = COMPOSE_FILE.read_text().split("services:", 1)[0]
    documented = dict(re.findall(r"(REDIS_[A-Z_]+)=(\S+)", header))
    for env, broker in (({**deployer_env(), **documented}, "sentinel://"), (deployer_env(), "redis://")):
        flower = interpolated(services()["flower"], env)
        settings = {
            name.lower(): value
            for name, value in environment_of(flower).items()
            if name.startswith(("REDIS_", "CELERY_"))
        }
        assert load_settings(**settings).broker_url.startswith(broker), (broker, settings)


def test_sandbox_runs_only_in_the_dev_profile() -> None:
    assert services()["sandbox"]["profiles"] == ["dev"]
    optional = {"sandbox", *HA_SERVICES}  # the ha profile's services: see the test above
    assert all("profiles" not in service for name, service in services().items() if name not in optional)
    assert documented_dev_env()["OKTOPOST_BASE_URL"] == "http://sandbox:8090"
    assert documented_dev_env()["ALLOW_HTTP_HOSTS"] == "sandbox"


def test_flower_has_basic_auth_from_the_environment_and_no_secrets() -> None:
    flower = services()["flower"]
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


def dockerfile_lines() -> list[str]:
    return [
        line.strip()
        for line in (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def test_dockerfile() -> None:
    lines = dockerfile_lines()
    instructions = [line.split()[0].upper() for line in lines]
    # the base image by digest: a rebuild starts from the same bytes
    assert re.fullmatch(r"FROM python:3\.11-slim@sha256:[0-9a-f]{64}", lines[0]), lines[0]
    assert "ENTRYPOINT" not in instructions
    user_at = max(i for i, word in enumerate(instructions) if word == "USER")
    assert lines[user_at].split()[1] not in ("root", "0", "0:0")
    assert "RUN" not in instructions[user_at:], "something runs as root after USER"
    # Every COPY source exists and is in the build context; the context has what the package needs.
    sources = [part for line in lines if line.startswith("COPY") for part in line.split()[1:-1]]
    assert {
        "pyproject.toml",
        "requirements.lock",
        "README.md",
        "celeryconfig.py",
        "worker",
        "api_shim",
        "sandbox",
    } <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), source
        assert in_build_context(source), f"{source} is excluded by .dockerignore"


def locked_versions() -> dict[str, Version]:
    pins = re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", (ROOT / "requirements.lock").read_text(), re.MULTILINE)
    return {canonicalize_name(name): Version(version) for name, version in pins}


def test_the_image_installs_exactly_the_locked_dependencies() -> None:
    runs = [line for line in dockerfile_lines() if line.startswith("RUN")]
    installs = [run for run in runs if "pip install" in run]
    assert installs[0].endswith("pip install --no-cache-dir -r requirements.lock"), installs
    # the package itself brings nothing the lock does not pin
    assert all("--no-deps" in run for run in installs[1:]), installs
    assert any("pip install --no-cache-dir --no-deps . " in f"{run} " for run in installs[1:]), installs
    lock = (ROOT / "requirements.lock").read_text()
    assert all(
        line.startswith(("#", " ")) or re.fullmatch(r"\S+==\S+", line) for line in lock.splitlines() if line
    )


def test_the_lock_satisfies_every_dependency_of_the_package_in_the_image() -> None:
    """Python 3.11 on Linux, the image's platform; a dependency whose floor is raised is locked above it.
    The image ships the otel extra too: traces need only OTEL_EXPORTER_OTLP_ENDPOINT, no other image."""
    import tomllib

    locked = locked_versions()
    environment = {"python_version": "3.11", "sys_platform": "linux", "platform_system": "Linux"}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for text in [*project["dependencies"], *project["optional-dependencies"]["otel"]]:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is not in requirements.lock"
        assert requirement.specifier.contains(locked[name], prereleases=True), (text, locked[name])
    assert locked["h11"] >= Version("0.16")  # request smuggling below (CVE-2025-43859)
    assert "tornado" in locked  # Flower's web server


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
        "worker/tasks/celery_tasks.py",
        "worker/transition.lua",
        "worker/schema/event.schema.json",
        "sandbox/consent.html",
        "cli/main.py",
        "LICENSE",
    ):
        assert in_build_context(path), path


def test_the_tenants_file_is_a_secret_of_the_shim_and_the_workers_only() -> None:
    assert compose()["secrets"]["tenants"] == {"file": "./tenants.toml"}
    for name, service in services().items():
        mounted = "tenants" in service.get("secrets", [])
        assert mounted == (name in ("shim", "worker")), name
    # .env.example names the mount (commented out: without a tenants file, one tenant from the env)
    assert re.search(r"^#\s*TENANTS_FILE=/run/secrets/tenants$", ENV_EXAMPLE.read_text(), re.MULTILINE)
    # the file holds Oktopost keys: never in git nor in the image
    assert "tenants.toml" in (ROOT / ".gitignore").read_text().splitlines()
    assert not in_build_context("tenants.toml")


def test_the_shipped_tenants_example_is_refused_until_its_keys_are_replaced(tmp_path: Path) -> None:
    example = (ROOT / "tenants.example.toml").read_text()
    with pytest.raises(ConfigError, match=r"TENANTS_FILE: tenant acme: .*placeholder"):
        load_settings(tenants_file=ROOT / "tenants.example.toml")
    replaced = tmp_path / "tenants.toml"
    replaced.write_text(re.sub(r'"change-me-([^"]*)"', r'"chosen-\1-0123456789"', example))
    tenants = load_settings(tenants_file=replaced).tenants
    assert sorted(tenant.name for tenant in tenants) == ["acme", "globex"]
