"""docker-compose.yml and .env.example as the compose tests read them: the services, their command
lines, environments and env files, and compose's variable interpolation."""

from __future__ import annotations

import re
import secrets
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.support.processes import ROOT

COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
BIN = Path(sys.executable).parent

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def argv_of(command: str | list[str], variables: Mapping[str, str] | None = None) -> list[str]:
    """A compose `command` as the argv the container runs: compose interpolates `variables` first, then
    splits a string shell-like."""
    if isinstance(command, str):
        return shlex.split(command if variables is None else interpolate(command, variables))
    return [str(part) if variables is None else interpolate(str(part), variables) for part in command]


def directives(argv: list[str]) -> list[tuple[str, list[str]]]:
    """redis-server's command line as config directives: `--user a on --port 1` -> [("user", ["a", "on"]),
    ("port", ["1"])]."""
    found: list[tuple[str, list[str]]] = []
    for part in argv[1:]:
        if part.startswith("--"):
            found.append((part[2:], []))
        else:
            found[-1][1].append(part)
    return found


def interpolated(node: Any, variables: Mapping[str, str]) -> Any:
    """The whole compose file as `docker compose config` resolves it: ValueError where a `${VAR:?...}`
    is missing."""
    if isinstance(node, dict):
        return {key: interpolated(value, variables) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolated(item, variables) for item in node]
    return interpolate(node, variables) if isinstance(node, str) else node


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


# What a deployer sets in .env beyond .env.example: the secrets it leaves for them to choose (its
# placeholders are refused), of the kind .env.example suggests (`openssl rand -hex 32`).
DEPLOYER_SECRETS = {
    "SHIM_API_KEYS": secrets.token_hex(32),
    "FLOWER_PASSWORD": secrets.token_hex(16),
    "REDIS_PIPELINE_PASSWORD": secrets.token_hex(32),
    "REDIS_SUBSCRIBER_PASSWORD": secrets.token_hex(32),
    "METRICS_TOKEN": secrets.token_hex(24),
}


def deployer_env() -> dict[str, str]:
    """The .env of a deployer running the dev profile: .env.example, the settings docker-compose.yml
    documents for the profile, and secrets of their own."""
    return {**env_example(), **documented_dev_env(), **DEPLOYER_SECRETS}


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
