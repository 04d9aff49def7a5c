"""Routing: which path and method reaches which endpoint.

`check_head` answers what can be answered from the request head alone, so
a refused request's body is never read; `serve` answers complete requests.
"""

from __future__ import annotations

import asyncio
import logging

from dlrd.auth import SourcePolicy
from dlrd.config import Config
from dlrd.http import Request, RequestHead, Response, plain_response
from dlrd.metrics import Metrics
from dlrd.receiver import RETRY_AFTER_SECONDS, ReceiptEndpoint, Respond
from dlrd.store import ReceiptStore, probe_write

log = logging.getLogger("dlrd.server")

HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"
HEALTH_PROBE_SECONDS = 5.0


class Application:
    """Every endpoint dlrd serves, behind one routing table."""

    def __init__(self, config: Config, store: ReceiptStore, receipts: ReceiptEndpoint, metrics: Metrics) -> None:
        self.receipt_paths = set(config["server", "path"])
        self.max_body = config["server", "max_body_bytes"]
        self.sources = source_policy(config)
        self.store = store
        self.receipts = receipts
        self.metrics = metrics

    def reload(self, config: Config) -> None:
        """SIGHUP: receipt paths and the allow-list follow the re-read config."""
        self.receipt_paths = set(config["server", "path"])
        self.sources = source_policy(config)

    def check_head(self, head: RequestHead, client: str) -> Response | None:
        """Refuse early, before the body is read: unknown path, wrong method, no or too big a length.

        allow_from guards the receipt paths only, so monitors can reach
        /healthz and /metrics without also being allowed to POST receipts.
        """
        path = head.path
        length = head.content_length
        if path in self.receipt_paths:
            if not self.sources.allows(client):
                log.warning("refused %s: not in [auth] allow_from", client)
                return self._refuse(403, "forbidden")
            if head.method != "POST":
                return self._refuse(405, "receipts are POSTed here", [("Allow", "POST")])
            if length is None and not head.chunked:
                return self._refuse(411, "a Content-Length or a chunked body is required")
        elif path in (HEALTH_PATH, METRICS_PATH):
            if head.method not in ("GET", "HEAD"):
                return self._refuse(405, f"{path} answers GET", [("Allow", "GET, HEAD")])
        else:
            return self._refuse(404, "no such path")
        if (length or 0) > self.max_body:
            return self._refuse(413, f"the body is larger than max_body_bytes ({self.max_body})")
        return None

    def serve(self, request: Request, respond: Respond) -> None:
        """Answer a complete request through `respond`, now or once its receipt is committed."""
        path = request.head.path
        if path == HEALTH_PATH:
            asyncio.get_running_loop().create_task(self._health()).add_done_callback(
                lambda probe: None if probe.cancelled() else respond(probe.result()))
        elif path == METRICS_PATH:
            respond(Response(200, self.metrics.render(), "text/plain; version=0.0.4; charset=utf-8"))
        else:
            self.receipts.serve(request, respond)

    def overdue(self, request: Request, stopping: bool = False) -> Response:
        """The answer for a request still waiting for storage after commit_timeout, or when dlrd stops."""
        if request.head.path in self.receipt_paths:
            return self.receipts.overdue(request, stopping)
        return plain_response(503, "storage did not answer in time; retry later", close=True,
                              headers=[("Retry-After", RETRY_AFTER_SECONDS)])

    async def _health(self) -> Response:
        """200 only when a write transaction commits now: the database is writable."""
        try:
            await asyncio.wait_for(self.store.committed(probe_write), HEALTH_PROBE_SECONDS)
        except Exception:  # any failure of the probe means "not writable"; the store logs the cause
            return plain_response(503, "storage unavailable")
        return plain_response(200, "ok")

    def _refuse(self, status: int, text: str, headers: list[tuple[str, str]] | None = None) -> Response:
        self.metrics.count("dlrd_requests_refused_total", status=str(status), reason="http")
        return plain_response(status, text, close=True, headers=headers)


def source_policy(config: Config) -> SourcePolicy:
    """allow_from and trusted_proxies from the config, as the server and the router apply them."""
    return SourcePolicy(tuple(config["auth", "allow_from"]), tuple(config["auth", "trusted_proxies"]))
