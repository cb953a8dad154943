"""The partner's own site, as far as the hosted journey needs one: a return page on loopback."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RETURN_PAGE = b"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Partner app</title></head>
<body><h1 id="partner">Back at the partner app</h1></body></html>"""


class PartnerSite:
    """Serves the return page on a free loopback port until closed."""

    def __init__(self) -> None:
        class ReturnPage(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(RETURN_PAGE)))
                self.end_headers()
                self.wfile.write(RETURN_PAGE)

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
