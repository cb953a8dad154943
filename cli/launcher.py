"""`oktopost-connect up`: the stack in the foreground, until Ctrl-C, SIGTERM or the death of a child;
it prints where everything listens and the key to call the shim with."""

from __future__ import annotations

import sys
import time
from typing import IO

from cli.stack import LaunchError, Stack, StackOptions, StopSignal, start_stack


def run_up(options: StackOptions, out: IO[str] = sys.stdout) -> int:
    """`oktopost-connect up`: start, print where everything is, wait for Ctrl-C/SIGTERM or a dead child."""
    stop = StopSignal()
    stop.install()
    try:
        stack = start_stack(options)
    except LaunchError as error:
        print(f"oktopost-connect up: {error}", file=sys.stderr)
        return 2
    exit_code = 0
    try:
        stack.wait_until_ready(stop=stop)
        print("oktopost-connect up: ready (Ctrl-C stops everything)", file=out)
        for line in describe(stack):
            print(f"  {line}", file=out)
        print(
            f"  try        curl -s -X POST {stack.shim_url}/v1/authorizations"
            " -H 'Authorization: Bearer <api key>' -H 'Content-Type: application/json'"
            ' -d \'{"network": "LinkedIn"}\'',
            file=out,
            flush=True,
        )
        while not stop.requested:
            exited = stack.exited_child()
            if exited is not None:
                print(f"oktopost-connect up: {exited.exit_reason()}; stopping the others", file=sys.stderr)
                exit_code = 1
                break
            time.sleep(0.2)
    except LaunchError as error:
        if not stop.requested:
            print(f"oktopost-connect up: {error}", file=sys.stderr)
            exit_code = 1
    finally:
        signals_before = stop.count
        if stop.requested:
            print(
                f"oktopost-connect up: {stop.name}, stopping (press Ctrl-C again to kill at once)",
                file=out,
                flush=True,
            )
        stack.stop(hurry=lambda: stop.count > signals_before)
    return exit_code


def describe(stack: Stack) -> list[str]:
    """What a developer needs: where everything listens, and the key to call the shim with."""
    lines = [
        f"shim       {stack.shim_url}   (OpenAPI: {stack.shim_url}/openapi.json)",
        f"callbacks  {stack.public_base_url}/v1/callback/{{flow_id}}",
    ]
    if stack.sandbox_url:
        lines += [
            f"sandbox    {stack.sandbox_url}   (local Oktopost; what it connected: /_sandbox/connections)",
            f"consent    {stack.sandbox_url}/oauth/authorize?request=...   (scripts: &decision=approve)",
        ]
    else:
        lines.append(f"oktopost   {stack.env.get('OKTOPOST_BASE_URL', 'https://api.oktopost.com')}")
    lines += [
        f"redis      {stack.redis.describe()}",
        f"events     {stack.prefix}:flow:{{flow_id}}  (all flows: {stack.prefix}:events)",
        f"returns    ALLOWED_RETURN_URLS={stack.env.get('ALLOWED_RETURN_URLS', '')}",
    ]
    if stack.generated_key:
        lines.append(
            f"api key    {stack.api_key}   (a throw-away dev key; set SHIM_API_KEYS to choose your own)"
        )
    else:
        lines.append("api key    one of SHIM_API_KEYS")
    return lines
