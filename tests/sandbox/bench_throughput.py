"""How many authenticated verify GETs per second the sandbox serves to keep-alive clients.

    python tests/sandbox/bench_throughput.py [--seconds 5] [--threads 4] [--url http://127.0.0.1:8090]

Without --url it starts its own sandbox on a free port. Not collected by pytest (no test_ prefix).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.processes import free_port, start_cli, wait_for_port

AUTH = ("demo-account", "demo-key")


def profile_token(base: str) -> str:
    with httpx.Client(base_url=base, auth=AUTH) as client:
        redirect = client.post(
            "/v2/social-authorization", data={"network": "LinkedIn", "url": "https://app.example/cb"}
        ).json()["RedirectUrl"]
        consent = client.get(redirect + "&decision=approve")
        return str(httpx.URL(consent.headers["location"]).params["okt"])


def hammer(base: str, token: str, stop_at: float, counts: list[int], index: int) -> None:
    with httpx.Client(base_url=base, auth=AUTH) as client:
        while time.perf_counter() < stop_at:
            response = client.get(f"/v2/social-authorization/{token}")
            assert response.status_code == 200, response.text
            counts[index] += 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--url", default=None)
    args = parser.parse_args()
    process = None
    base = args.url
    if base is None:
        port = free_port()
        process = start_cli(["sandbox", "--port", str(port)], name="sandbox-bench")
        wait_for_port(port)
        base = f"http://127.0.0.1:{port}"
    try:
        token = profile_token(base)
        counts = [0] * args.threads
        stop_at = time.perf_counter() + args.seconds
        threads = [
            threading.Thread(target=hammer, args=(base, token, stop_at, counts, i))
            for i in range(args.threads)
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        total = sum(counts)
        rate = total / elapsed
        print(f"{total} verify GETs in {elapsed:.1f}s over {args.threads} keep-alive clients: {rate:.0f}/s")
    finally:
        if process is not None:
            process.stop()


if __name__ == "__main__":
    main()
