"""The `.env` file of the working directory: its settings, for every reader of the environment.

Read at a process's start (the command line, and `get_settings` for `celery -A worker ...`): each
`KEY=VALUE` line is put into the process's environment unless the environment sets that key already
(the environment wins, as it does over docker compose's `env_file`). So the settings, the OpenTelemetry
SDK's `OTEL_*` and the processes `oktopost-connect up` starts all see the same values. Comments, blank
lines, `export KEY=VALUE` and quoted values are read as docker compose reads them; `${VAR}` is left as
written. A line that is no setting stops start-up with one line naming it (`EnvFileError`).
"""

from __future__ import annotations

import io
import os
from collections.abc import MutableMapping
from pathlib import Path

from dotenv.parser import parse_stream

ENV_FILE = Path(".env")
_PUT_HERE: set[str] = set()  # the keys this process's environment holds from `.env`, not its own


class EnvFileError(Exception):
    """The `.env` file cannot be read, or holds a line that is no setting; the message is one line."""


def read_env_file(path: Path = ENV_FILE, environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Puts `path`'s settings into `environ` (the process's environment) where it has none of its own;
    returns the ones it put. No file, nothing to do."""
    environ = os.environ if environ is None else environ
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else type(error).__name__
        raise EnvFileError(f"{path} could not be read: {reason}") from None
    added: dict[str, str] = {}
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            raise EnvFileError(f"{path} line {binding.original.line}: not a KEY=VALUE setting")
        if binding.key is None or binding.value is None:  # a comment, a blank line, a bare KEY
            continue
        if binding.key not in environ:  # a key given twice: its last line, as docker compose reads it
            added[binding.key] = binding.value
    environ.update(added)
    if environ is os.environ:
        _PUT_HERE.update(added)
    return added


def from_env_file() -> frozenset[str]:
    """The keys of this process's environment that `.env` put there (the environment had none of them):
    what a reader of the environment that ran before the file was read, such as Flower, did not see."""
    return frozenset(_PUT_HERE)
