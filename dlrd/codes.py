"""Connection Software report codes: what each number means for a message.

The provider sends a bare number; operators want to know whether the message
was delivered, is still on its way, or is lost for good. The built-in table
comes from the provider's status list; `[report_codes]` in the ini adds or
overrides rows, so a code the provider introduces tomorrow needs no release.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

STATES = ("delivered", "pending", "failed", "unknown")


@dataclass(frozen=True)
class ReportCode:
    """The meaning of one report code."""

    code: int
    label: str
    state: str
    final: bool


def _row(code: int, label: str, state: str, final: bool) -> tuple[int, ReportCode]:
    return code, ReportCode(code, label, state, final)


BUILTIN_CODES: Mapping[int, ReportCode] = dict(
    [
        _row(0, "Accepted by phone", "delivered", True),
        _row(-4, "Accepted by SMSC", "pending", False),
        _row(-3, "Delayed", "pending", False),
        _row(2, "Invalid login", "failed", True),
        _row(3, "Invalid number", "failed", True),
        _row(4, "Inactive number", "failed", True),
        _row(5, "Invalid number", "failed", True),
        _row(7, "Invalid number", "failed", True),
        _row(8, "Blacklisted number", "failed", True),
        _row(11, "Invalid characters", "failed", True),
        _row(19, "Invalid characters", "failed", True),
        _row(25, "Deleted by SMSC", "failed", True),
        _row(27, "Expired by SMSC", "failed", True),
        _row(28, "Abandoned by SMSC", "failed", True),
    ]
)


class ReportCodeTable:
    """The built-in codes with the operator's overrides laid on top."""

    def __init__(self, overrides: Mapping[int, ReportCode] | None = None) -> None:
        self._codes = {**BUILTIN_CODES, **(overrides or {})}

    def lookup(self, code: int) -> ReportCode:
        """Never fails: a code nobody knows yet is stored as `unknown`, not refused."""
        known = self._codes.get(code)
        if known is not None:
            return known
        return ReportCode(code, f"Unknown report code {code}", "unknown", False)

    def items(self) -> list[ReportCode]:
        return [self._codes[code] for code in sorted(self._codes)]


def parse_code_row(code_text: str, value: str) -> ReportCode:
    """Read one `[report_codes]` line: `<code> = <label>, <state>, <final>`.

    The label may itself hold commas, so the state and final flag are taken
    from the right.
    """
    try:
        code = int(code_text.strip())
    except ValueError:
        raise ValueError("the key must be a report code number like 27 or -4") from None
    if not -999 <= code <= 999:
        raise ValueError("a report code has at most 3 digits")
    parts = [part.strip() for part in value.rsplit(",", 2)]
    if len(parts) != 3 or not parts[0]:
        raise ValueError("must be '<label>, <state>, <final>' like 'Expired by SMSC, failed, yes'")
    label, state, final_text = parts
    if state not in STATES:
        raise ValueError(f"state must be one of {', '.join(STATES)}, got {state!r}")
    final_map = {"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False}
    if final_text.lower() not in final_map:
        raise ValueError(f"final must be yes or no, got {final_text!r}")
    return ReportCode(code, label, state, final_map[final_text.lower()])
