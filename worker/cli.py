"""The `oktopost-connect` command: one sub-command per component, plus `up`, `demo` and `watch`.

Each sub-command imports its component lazily, so `oktopost-connect sandbox` never loads the pipeline
and the pipeline never loads the sandbox.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

USAGE = """usage: oktopost-connect COMMAND [options]

commands:
  up        run shim + worker (+ sandbox, + embedded Redis when needed) in the foreground
  demo      like up on free ports, then drive a profile and a page flow end to end
  shim      the HTTP shim (FastAPI on uvicorn)
  worker    a Celery worker (threads pool)
  sandbox   a local stand-in for Oktopost's social authorization API
  watch     print a flow's events: its history, then live ones until a terminal event
  bench     the benchmark

Run `oktopost-connect COMMAND --help` for a command's options."""


def _sandbox(argv: Sequence[str]) -> int:
    from sandbox.cli import main

    return main(argv)


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {"sandbox": _sandbox}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if args else 2
    command = COMMANDS.get(args[0])
    if command is None:
        print(f"oktopost-connect: unknown command {args[0]!r} (see oktopost-connect --help)", file=sys.stderr)
        return 2
    return command(args[1:])


if __name__ == "__main__":
    sys.exit(main())
