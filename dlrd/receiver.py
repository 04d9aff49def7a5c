"""The receipt endpoint: one POSTed envelope in, one SOAP answer out.

The path of a receipt reads straight through here, in the request's own
thread: parse the envelope, apply the field rules, hand the receipt to the
store and wait for the commit that holds it, then build the answer. Every
refusal is logged, counted and, when it was an understood receipt,
quarantined, so nothing the provider sent is silently lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Container
from dataclasses import dataclass
from datetime import datetime

from dlrd.auth import Credentials
from dlrd.codes import ReportCode, ReportCodeTable
from dlrd.config import Config
from dlrd.errors import StorageUnavailable
from dlrd.messages import Request, Response, plain_response
from dlrd.metrics import Metrics
from dlrd.ratelimit import LogLimiter, LogTally, SourceBudget
from dlrd.receipt import InvalidReceipt, Receipt, validate_fields
from dlrd.soap import (
    Envelope,
    EnvelopeRejected,
    SoapVersion,
    build_fault,
    build_response,
    parse_envelope,
    redact_pin,
    version_from_content_type,
)
from dlrd.store import QUARANTINE_DISK, Pending, ReceiptStore, insert_quarantine, insert_receipt

log = logging.getLogger("dlrd.receipts")

RETRY_AFTER_SECONDS = "30"
# What of a refused receipt's MessageIdentifier is echoed and logged: the
# field holds 15 characters at most, and a refusal must not send back or
# log a megabyte an attacker chose.
ECHO_LIMIT = 64


_second_text: tuple[int, str] = (-1, "")


def received_now(now: float | None = None) -> str:
    """Arrival time, UTC with milliseconds, as stored and journaled (the second formatted once per second)."""
    global _second_text
    if now is None:
        now = time.time()
    second = int(now)
    if _second_text[0] != second:
        _second_text = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{_second_text[1]}.{int((now - second) * 1000):03d}Z"


def receipt_lag(timestamp: str, arrived: float) -> float:
    """Seconds from Timestamp1 (normalised to UTC by dlrd.receipt) to `arrived`, for dlrd_receipt_lag_seconds.

    A Timestamp1 later than the arrival means the provider's clock is ahead
    of ours: counted as 0 (the le="0" bucket), so _sum only grows and
    rate(_sum)/rate(_count) stays a mean lag.
    """
    return max(0.0, arrived - datetime.fromisoformat(timestamp).timestamp())


def response_content_type(media_type: str, version: SoapVersion) -> str:
    """SPEC section 1: answer in the media type the provider used."""
    if version == "1.2":
        return "application/soap+xml; charset=utf-8"
    if media_type == "text/soap":
        return "text/soap; charset=utf-8"
    return "text/xml; charset=utf-8"


def fault_response(media_type: str, version: SoapVersion, sender_at_fault: bool, reason: str,
                   status: int | None = None) -> Response:
    """A SOAP Fault with the status SOAP prescribes for it."""
    if status is None:
        # SOAP 1.1 §6.2: faults travel with HTTP 500. SOAP 1.2 part 2 §7.5.1:
        # a Sender fault is 400, a Receiver fault 500.
        status = 400 if version == "1.2" and sender_at_fault else 500
    return Response(status, build_fault(version, sender_at_fault, reason),
                    response_content_type(media_type, version))


def unavailable_response(media_type: str, version: SoapVersion, reason: str) -> Response:
    """503 with Retry-After and a Server fault: storage could not take the receipt, the provider retries."""
    response = fault_response(media_type, version, False, reason, status=503)
    response.headers.append(("Retry-After", RETRY_AFTER_SECONDS))
    return response


KIND_AUTHENTICATION = "authentication"
KIND_INVALID_FIELD = "invalid-field"
KIND_STRICT_MATCH = "strict-match"


@dataclass(frozen=True)
class Admitted:
    """A receipt that passed every rule, with the meaning of its report code."""

    receipt: Receipt
    code: ReportCode


@dataclass(frozen=True)
class Refused:
    """Why a parsed receipt is not stored: `kind` is one of the KIND_ names, `reason` is said to the provider."""

    kind: str
    reason: str
    message_id: str


def admit(envelope: Envelope, credentials: Credentials, codes: ReportCodeTable,
          expected: Container[str] | None = None) -> Admitted | Refused:
    """The rules a parsed receipt must pass to be stored, in order; the network and `dlrd replay` share them.

    `expected` holds the submitted message ids when strict_match is on.
    """
    fields = envelope.fields
    message_id = fields.get("MessageIdentifier", "")[:ECHO_LIMIT]
    if credentials.required and not credentials.accept(fields):
        return Refused(KIND_AUTHENTICATION, "authentication failed", message_id)
    try:
        receipt = validate_fields(fields, envelope.duplicates)
    except InvalidReceipt as invalid:
        return Refused(KIND_INVALID_FIELD, str(invalid), message_id)
    if expected is not None and receipt.message_id not in expected:
        return Refused(KIND_STRICT_MATCH, "mismatched delivery receipt: no message was submitted with "
                                          f"MessageIdentifier {receipt.message_id!r}", receipt.message_id)
    return Admitted(receipt, codes.lookup(receipt.report))


class ReceiptEndpoint:
    """Turns a POSTed SubmitDeliveryReceipt into a stored receipt and an answer."""

    def __init__(self, store: ReceiptStore, codes: ReportCodeTable, metrics: Metrics,
                 credentials: Credentials, quarantine_rate: int = 1024 * 1024, commit_timeout: float = 15.0,
                 expected: Container[str] | None = None) -> None:
        self.store = store
        self.expected = expected  # strict_match: the ids a receipt must be for; None when it is off
        self.codes = codes
        self.metrics = metrics
        self.credentials = credentials
        self.commit_timeout = commit_timeout
        self.last_stored = 0.0
        self.overdue_logged = False  # receipts waited past commit_timeout since commits last completed
        self.quarantine_rate = SourceBudget(quarantine_rate)
        self._past_rate = LogTally(
            log, "not keeping refused requests from %s in the quarantine: past [storage] quarantine_rate; they "
                 "are answered as usual and counted in dlrd_quarantine_not_kept_total, once a minute here",
            "%d refused request(s) from %d source(s) answered but not kept in the quarantine, past "
            "[storage] quarantine_rate (the most from %s)")
        self._quarantine_full = LogTally(
            log, "the quarantine is full ([storage] quarantine_max_bytes): a refused request from %s was answered "
                 "but not kept; delete old quarantine rows or raise the limit (counted once a minute here)",
            "%d refused request(s) from %d source(s) answered but not kept: the quarantine is full, "
            "[storage] quarantine_max_bytes (the most from %s)")
        self._disk_low = LogTally(
            log, "the disk holding the database is nearly full: a refused request from %s was answered but not "
                 "kept in the quarantine, so the space left is for receipts (counted once a minute here)",
            "%d refused request(s) from %d source(s) answered but not kept: the disk is nearly full "
            "(the most from %s)")
        self.refusals = LogLimiter(log)

    def flush_logs(self) -> None:
        """Housekeeping: log the counts of requests not kept or not logged, when a minute has passed."""
        self._past_rate.flush()
        self._quarantine_full.flush()
        self._disk_low.flush()
        self.refusals.flush()

    def serve(self, request: Request) -> Response:
        """The answer: at once when refused, after the commit when stored."""
        media_type = request.head.media_type
        try:
            envelope = parse_envelope(request.body, request.head.charset, version_from_content_type(media_type))
        except EnvelopeRejected as rejected:
            self.refusals.log(logging.WARNING, "refusals of requests that are not receipts",
                              "refused a request from %s: %s", request.remote_addr, rejected.reason)
            self.metrics.count("dlrd_requests_refused_total", status="fault", reason="not-a-receipt")
            return fault_response(media_type, rejected.soap_version, True, rejected.reason)
        try:
            verdict = admit(envelope, self.credentials, self.codes, self.expected)
        except StorageUnavailable as error:  # strict_match could not read expected_messages
            return self._failure(request, envelope, error)
        if isinstance(verdict, Refused):
            return self._refuse(request, envelope, verdict)
        return self._store(request, envelope, verdict)

    def _refuse(self, request: Request, envelope: Envelope, refused: Refused) -> Response:
        """Keep the refused request in case the config was the mistake, and answer as SPEC says.

        Failed authentication gets the same fault whichever credential was
        wrong; a receipt that breaks a field rule or is not expected gets
        Report -1 with the reason.
        """
        received_at = received_now()
        if refused.kind == KIND_AUTHENTICATION:
            username = envelope.fields.get("Username", "")
            self.metrics.count("dlrd_auth_failures_total")
            fault = fault_response(request.head.media_type, envelope.soap_version, True, refused.reason)
            return self._quarantine(request, envelope, received_at, refused, fault,
                                    "authentication failed for a receipt from %s (Username %r); quarantined",
                                    request.remote_addr, username[:ECHO_LIMIT])
        answer = self._answer(request.head.media_type, envelope, refused.message_id, -1, refused.reason)
        return self._quarantine(request, envelope, received_at, refused, answer,
                                "quarantined a receipt from %s (MessageIdentifier %r): %s",
                                request.remote_addr, refused.message_id, refused.reason)

    def _store(self, request: Request, envelope: Envelope, admitted: Admitted) -> Response:
        media_type = request.head.media_type
        receipt = admitted.receipt
        arrived = time.time()
        pending = self.store.submit(insert_receipt(receipt, admitted.code, received_now(arrived),
                                                   request.remote_addr, request.tls_client, self.store.node))
        late = self._wait(request, envelope, pending)
        if late is not None:
            return late
        stored = pending.value
        if pending.error is not None:
            return self._failure(request, envelope, pending.error)
        if stored.duplicate:
            self.metrics.count("dlrd_receipts_duplicate_total")
            return self._answer(media_type, envelope, receipt.message_id, 0, "duplicate of a stored receipt")
        self.metrics.count("dlrd_receipts_stored_total", state=admitted.code.state)
        self.metrics.observe("dlrd_receipt_lag_seconds", receipt_lag(receipt.timestamp, arrived))
        self.last_stored = time.time()
        return self._answer(media_type, envelope, receipt.message_id, 0, "stored")

    def _wait(self, request: Request, envelope: Envelope, pending: Pending) -> Response | None:
        """Wait for the commit holding the request's job; a 503 when it did not come in time (or dlrd stops)."""
        request.waiting_on = pending
        try:
            finished = pending.wait(self.commit_timeout)
        finally:
            request.waiting_on = None
        if not finished or pending.interrupted:
            return self.overdue(request, envelope.soap_version, stopping=pending.interrupted)
        if self.overdue_logged and pending.error is None:
            log.warning("commits complete again after receipts waited past commit_timeout")
            self.overdue_logged = False
        return None

    def _passed_pin_check(self, refused: Refused) -> bool:
        """Was the refused request checked against a configured PIN, and did it pass?"""
        return refused.kind != KIND_AUTHENTICATION and bool(self.credentials.pin)

    def _quarantine(self, request: Request, envelope: Envelope, received_at: str, refused: Refused,
                    answer: Response, note: str, *note_args: object) -> Response:
        """Keep the request, PIN redacted, for replay, then answer `answer`; 503 if the database cannot take it.

        `note` (a format for `note_args`) is logged once the request is
        kept: a 503 has already been reported by the store, and saying
        "quarantined" then would send the operator to an empty table.
        """
        source = request.remote_addr
        # The budget first: redaction costs a parse, and past the rate nothing is kept anyway.
        if not self.quarantine_rate.take(source, len(request.body)):
            self.metrics.count("dlrd_quarantine_not_kept_total", reason="rate")
            self._past_rate.note(source)
            return answer
        body = redact_pin(request.body, envelope.fields.get("PIN"), envelope.encoding)
        head = request.head
        content_type = f"{head.media_type}; charset={head.charset}" if head.charset else head.media_type
        pending = self.store.submit(insert_quarantine(received_at, source, refused.reason, content_type, body,
                                                      self.store.quarantine_budget, refused.kind,
                                                      refused.message_id, self._passed_pin_check(refused)))
        late = self._wait(request, envelope, pending)
        if late is not None:
            return late
        if pending.error is not None:
            return self._failure(request, envelope, pending.error)
        if isinstance(pending.value, str):  # not kept: the quarantine or the disk is full
            self.metrics.count("dlrd_quarantine_not_kept_total", reason=pending.value)
            (self._disk_low if pending.value == QUARANTINE_DISK else self._quarantine_full).note(source)
        else:
            log.warning(note, *note_args)
            self.metrics.count("dlrd_receipts_quarantined_total", reason=refused.kind)
        return answer

    def overdue(self, request: Request, version: SoapVersion, stopping: bool = False) -> Response:
        """A 503 for a receipt whose commit has not completed within commit_timeout (logged once per episode),
        or by the end of a stop's grace (the server logs that). The connection is closed: a late outcome
        must not be taken for the next request's answer."""
        self.metrics.count("dlrd_storage_failures_total")
        if not stopping and not self.overdue_logged:
            log.error("receipts waited longer than commit_timeout for their commit (is the disk hanging?); "
                      "answering 503 until commits complete again")
            self.overdue_logged = True
        response = unavailable_response(request.head.media_type, version,
                                        "the receipt could not be stored durably in time; retry later")
        response.close = True
        return response

    def _failure(self, request: Request, envelope: Envelope, error: BaseException) -> Response:
        """The answer when the store could not take the job: 503 to retry later, or 500 for a fault of ours."""
        media_type = request.head.media_type
        if isinstance(error, StorageUnavailable):
            self.metrics.count("dlrd_storage_failures_total")
            return unavailable_response(media_type, envelope.soap_version,
                                        "the receipt could not be stored durably; retry later")
        log.error("internal error while storing a request from %s", request.remote_addr, exc_info=error)
        return plain_response(500, "internal error", close=True)

    def _answer(self, media_type: str, envelope: Envelope, message_id: str, report: int, text: str) -> Response:
        return Response(200, build_response(envelope, message_id, report, text),
                        response_content_type(media_type, envelope.soap_version))


def credentials(config: Config) -> Credentials:
    """The Username and PIN receipts must carry: none when [auth] sets neither."""
    return Credentials(config["auth", "username"], config["auth", "pin"])

