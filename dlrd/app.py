"""Routing: which path and method reaches which endpoint.

`check_head` answers what can be answered from the request head alone, so
a refused request's body is never read; `serve` answers complete requests,
in the request's own thread, waiting for storage when it must.
"""

from __future__ import annotations

import logging

from dlrd.auth import SourcePolicy
from dlrd.config import Config
from dlrd.health import HealthCheck
from dlrd.messages import Request, RequestHead, Response, plain_response
from dlrd.metrics import HEALTH_PATH, METRICS_PATH, Metrics
from dlrd.ratelimit import LogLimiter
from dlrd.receiver import ReceiptEndpoint
from dlrd.store import ReceiptStore
from dlrd.wsdl import WSDL_MEDIA_TYPE, LocationRefused, is_wsdl_query, wsdl_document, wsdl_location

log = logging.getLogger("dlrd.server")



class Application:
    """Every endpoint dlrd serves, behind one routing table."""

    def __init__(self, config: Config, store: ReceiptStore, receipts: ReceiptEndpoint, metrics: Metrics) -> None:
        self.receipt_paths = set(config["server", "path"])
        self.max_body = config["server", "max_body_bytes"]
        self.sources = source_policy(config)
        self.store = store
        self.health = HealthCheck(store, metrics)
        self.receipts = receipts
        self.metrics = metrics
        self.refusals = LogLimiter(log)

    def reload(self, config: Config) -> None:
        """SIGHUP: receipt paths and the allow-lists follow the re-read config."""
        self.receipt_paths = set(config["server", "path"])
        self.sources = source_policy(config)

    def check_head(self, head: RequestHead, client: str) -> Response | None:
        """Refuse early, before the body is read: unknown path, wrong method, no or too big a length.

        allow_from guards the receipt paths, monitor_allow_from /healthz and
        /metrics, so monitors need not also be allowed to POST receipts.
        `GET <path>?wsdl` is under allow_from too: it is part of the receipt
        endpoint, which the sources that POST receipts (and the operator's
        own machines, listed with them) are the ones to read.
        """
        path = head.path
        length = head.content_length
        if path in self.receipt_paths:
            if not self.sources.allows(client):
                self.refusals.log(logging.WARNING, "refusals of sources not in allow_from",
                                  "refused %s: not in [auth] allow_from", client)
                return self._refuse(403, "forbidden")
            if head.method != "POST":
                if is_wsdl_query(head.query):
                    if head.method in ("GET", "HEAD"):
                        return None
                    return self._refuse(405, "the WSDL is read with GET", [("Allow", "GET, HEAD")])
                return self._refuse(405, "receipts are POSTed here (GET ?wsdl for the WSDL)", [("Allow", "POST")])
            if length is None and not head.chunked:
                return self._refuse(411, "a Content-Length or a chunked body is required")
        elif path in (HEALTH_PATH, METRICS_PATH):
            if not self.sources.monitors(client):
                self.refusals.log(logging.WARNING, "refusals of sources not in monitor_allow_from",
                                  "refused %s: not in [server] monitor_allow_from", client)
                return self._refuse(403, "forbidden")
            if head.method not in ("GET", "HEAD"):
                return self._refuse(405, f"{path} answers GET", [("Allow", "GET, HEAD")])
        else:
            return self._refuse(404, "no such path")
        if (length or 0) > self.max_body:
            return self._refuse(413, f"the body is larger than max_body_bytes ({self.max_body})")
        return None

    def serve(self, request: Request) -> Response:
        """The answer to a complete request: at once, or once its receipt is committed."""
        path = request.head.path
        if path == HEALTH_PATH:
            return self._health()
        if path == METRICS_PATH:
            return Response(200, self.metrics.render(), "text/plain; version=0.0.4; charset=utf-8")
        if request.head.method != "POST":  # check_head let only GET or HEAD <path>?wsdl through
            return self._wsdl(request)
        return self.receipts.serve(request)

    def housekeeping(self) -> None:
        """Twice a second, from the idle selector's thread: what is due without a request to trigger it."""
        self.receipts.flush_logs()
        self.refusals.flush()

    def _health(self) -> Response:
        """200 when the database takes receipts now (dlrd.health), else 503; the reason is the body."""
        status, reason = self.health.answer()
        return plain_response(status, reason)

    def _wsdl(self, request: Request) -> Response:
        """The WSDL with this URL as its address; 400 when the request's Host cannot make one."""
        try:
            location = wsdl_location(request.scheme, request.head.path, request.head.headers,
                                     self.sources.trusts(request.peer_addr))
        except LocationRefused as refused:
            return self._refuse(400, str(refused))
        return Response(200, wsdl_document(location), WSDL_MEDIA_TYPE)

    def _refuse(self, status: int, text: str, headers: list[tuple[str, str]] | None = None) -> Response:
        self.metrics.count("dlrd_requests_refused_total", status=str(status), reason="http")
        return plain_response(status, text, close=True, headers=headers)


def source_policy(config: Config) -> SourcePolicy:
    """allow_from, monitor_allow_from and trusted_proxies from the config, as the server and the router apply them."""
    return SourcePolicy(tuple(config["auth", "allow_from"]), tuple(config["auth", "trusted_proxies"]),
                        tuple(config["server", "monitor_allow_from"]))
