"""The partner's own site, as far as the hosted journey needs one: a return page on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

RETURN_PAGE = b"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Partner app</title></head>
<body><h1 id="partner">Back at the partner app</h1></body></html>"""


class PartnerSite:
    """Serves the return page on a free loopback port until closed; and any page a test puts in `pages`
    (by path), and `POST /start-connection` answered by `starter` (the partner's server starting a flow)."""

    def __init__(self) -> None:
        self.pages: dict[str, bytes] = {}
        self.starter: Callable[[], dict[str, Any]] | None = None
        site = self

        class ReturnPage(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._answer(
                    "text/html; charset=utf-8", site.pages.get(urlsplit(self.path).path, RETURN_PAGE)
                )

            def do_POST(self) -> None:
                if urlsplit(self.path).path != "/start-connection" or site.starter is None:
                    self.send_error(404)
                    return
                self._answer("application/json", json.dumps(site.starter()).encode())

            def _answer(self, media_type: str, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", media_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: the tests read where the browser landed from the browser."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), ReturnPage)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="partner-site", daemon=True)
        self._thread.start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def return_url(self) -> str:
        """A return URL with a query of its own, which the journey must keep."""
        return f"{self.origin}/done?partner=acme"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
