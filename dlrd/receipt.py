"""Field rules for a delivery receipt (SPEC section 1, the field table).

A receipt that breaks a rule is not dropped: the caller quarantines it and
answers Report -1 with the reason, so the rules here only say *what* is
wrong, in words an operator can act on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

MAX_USERNAME = 20
MAX_PIN = 20
MAX_SENT_TO_DIGITS = 15
MAX_MESSAGE_ID = 15
REQUIRED_FIELDS = ("MessageIdentifier", "SentTo", "Timestamp1", "Report")

# re.ASCII: without it \d takes any Unicode digit, and int() reads
# full-width "\uff12\uff10\uff10\uff12" as 2002, so such a timestamp would pass.
_TIMESTAMP = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):?(\d{2}))",
    re.ASCII,
)
_REPORT = re.compile(r"-?\d{1,3}")


class InvalidReceipt(ValueError):
    """A field breaks the rules; the message is the Text sent back with Report -1."""


@dataclass(frozen=True)
class Receipt:
    """One validated delivery receipt, as the provider meant it."""

    message_id: str
    sent_to: str
    report: int
    timestamp: str
    timestamp_raw: str
    username: str | None
    pin: str | None


def parse_timestamp(text: str) -> str:
    """Normalise Timestamp1 to UTC `YYYY-MM-DDTHH:MM:SS[.ffffff]Z`.

    The provider documents `YYYY-MM-DDTHH:MM:SSZ`; fractions and offsets
    are accepted because other senders of the same format use them.
    """
    match = _TIMESTAMP.fullmatch(text)
    if match is None:
        raise InvalidReceipt(f"Timestamp1 {text[:40]!r} is not like 2002-08-27T13:38:00Z")
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    try:
        if zulu == "Z" and fraction is None and "T" in text:
            # The provider's own form is already normalised: check the date is real, keep the text.
            datetime(int(year), int(month), int(day), int(hour), int(minute), int(second))
            return text
        micro = int((fraction or "0")[:6].ljust(6, "0"))
        if int(off_h or 0) > 23 or int(off_m or 0) > 59:
            raise ValueError("offset out of range")
        offset = timedelta(hours=int(off_h or 0), minutes=int(off_m or 0))
        zone = timezone(-offset if sign == "-" else offset)
        instant = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micro, zone
        ).astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidReceipt(f"Timestamp1 {text[:40]!r} is not a real date and time") from None
    return format_utc(instant)


def format_utc(instant: datetime) -> str:
    """The one textual form of an instant used in storage and the journal."""
    # Not strftime: glibc's %Y writes the year 999 as "999", not "0999".
    text = (f"{instant.year:04d}-{instant.month:02d}-{instant.day:02d}"
            f"T{instant.hour:02d}:{instant.minute:02d}:{instant.second:02d}")
    if instant.microsecond:
        text += f".{instant.microsecond:06d}"
    return text + "Z"


def validate_fields(fields: Mapping[str, str], duplicates: tuple[str, ...] = ()) -> Receipt:
    """Turn the text of the envelope's fields into a Receipt, or say which rule broke."""
    if duplicates:
        raise InvalidReceipt(f"{duplicates[0]} appears more than once")
    for name in REQUIRED_FIELDS:
        if not fields.get(name):
            raise InvalidReceipt(f"{name} is missing or empty")

    message_id = fields["MessageIdentifier"]
    if len(message_id) > MAX_MESSAGE_ID:
        raise InvalidReceipt(f"MessageIdentifier is longer than {MAX_MESSAGE_ID} characters")
    if not message_id.isprintable():
        raise InvalidReceipt("MessageIdentifier holds control characters")

    sent_to = fields["SentTo"].removeprefix("+")
    if not (sent_to.isascii() and sent_to.isdigit()):
        raise InvalidReceipt("SentTo must be digits only (E.164 without '+')")
    if len(sent_to) > MAX_SENT_TO_DIGITS:
        raise InvalidReceipt(f"SentTo is longer than {MAX_SENT_TO_DIGITS} digits")

    report_text = fields["Report"]
    if not (report_text.isascii() and _REPORT.fullmatch(report_text)):
        raise InvalidReceipt(f"Report {report_text[:20]!r} is not an integer of at most 3 digits")

    username = fields.get("Username")
    if username is not None and len(username) > MAX_USERNAME:
        raise InvalidReceipt(f"Username is longer than {MAX_USERNAME} characters")
    pin = fields.get("PIN")
    if pin is not None and len(pin) > MAX_PIN:
        raise InvalidReceipt(f"PIN is longer than {MAX_PIN} characters")

    timestamp_raw = fields["Timestamp1"]
    return Receipt(
        message_id=message_id,
        sent_to=sent_to,
        report=int(report_text),
        timestamp=parse_timestamp(timestamp_raw),
        timestamp_raw=timestamp_raw,
        username=username,
        pin=pin,
    )
