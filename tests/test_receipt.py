"""The field rules of SPEC section 1 (dlrd.receipt) and the report codes of section 2 (dlrd.codes)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from dlrd.codes import BUILTIN_CODES, ReportCode, ReportCodeTable, parse_code_row
from dlrd.receipt import InvalidReceipt, Receipt, format_utc, parse_timestamp, validate_fields

SEED_FIELDS = {"Username": "ANOther.61234", "PIN": "BLUE.music", "Timestamp1": "2002-08-27T13:38:00Z",
               "SentTo": "447009123456", "MessageIdentifier": "3C7D98A4", "Report": "0"}


def fields(**changes: str | None) -> dict[str, str]:
    merged = {**SEED_FIELDS, **changes}
    return {name: value for name, value in merged.items() if value is not None}


def test_seed_fields_make_a_receipt():
    assert validate_fields(SEED_FIELDS) == Receipt(
        message_id="3C7D98A4", sent_to="447009123456", report=0, timestamp="2002-08-27T13:38:00Z",
        timestamp_raw="2002-08-27T13:38:00Z", username="ANOther.61234", pin="BLUE.music")


@pytest.mark.parametrize(("name", "longest"), [
    ("MessageIdentifier", "M" * 15), ("SentTo", "4" * 15), ("Username", "U" * 20), ("PIN", "P" * 20)])
def test_each_length_limit_is_inclusive(name, longest):
    validate_fields(fields(**{name: longest}))
    too_long = longest + longest[0]

    with pytest.raises(InvalidReceipt, match=name):
        validate_fields(fields(**{name: too_long}))


def test_lengths_count_characters_not_bytes():
    assert validate_fields(fields(MessageIdentifier="É" * 15)).message_id == "É" * 15


def test_credentials_are_optional():
    receipt = validate_fields(fields(Username=None, PIN=None))

    assert (receipt.username, receipt.pin) == (None, None)


@pytest.mark.parametrize("name", ["MessageIdentifier", "SentTo", "Timestamp1", "Report"])
@pytest.mark.parametrize("value", [None, ""])
def test_required_field_missing_or_empty_is_named(name, value):
    with pytest.raises(InvalidReceipt, match=f"{name} is missing"):
        validate_fields(fields(**{name: value}))


def test_duplicate_field_is_named():
    with pytest.raises(InvalidReceipt, match="SentTo appears more than once"):
        validate_fields(SEED_FIELDS, ("SentTo",))


def test_message_identifier_with_control_characters_is_refused():
    with pytest.raises(InvalidReceipt, match="control"):
        validate_fields(fields(MessageIdentifier="3C7D\n98A4"))


@pytest.mark.parametrize(("sent_to", "stored"), [("+447009123456", "447009123456"), ("0", "0"),
                                                 ("+" + "4" * 15, "4" * 15)])
def test_sent_to_is_digits_with_an_optional_leading_plus(sent_to, stored):
    assert validate_fields(fields(SentTo=sent_to)).sent_to == stored


@pytest.mark.parametrize("sent_to", ["abc", "+", "++447009123456", "4470 0912", "44-7009", "447009123456+",
                                     "\uff14\uff14\uff17\uff10\uff10\uff19", "٤٤٧", "+4470091234567890"])
def test_sent_to_that_is_not_digits_is_refused(sent_to):
    with pytest.raises(InvalidReceipt, match="SentTo"):
        validate_fields(fields(SentTo=sent_to))


@pytest.mark.parametrize(("text", "code"), [("0", 0), ("-1", -1), ("-4", -4), ("27", 27), ("999", 999),
                                            ("-999", -999), ("007", 7), ("-0", 0)])
def test_report_is_an_integer_of_at_most_three_digits_maybe_negative(text, code):
    assert validate_fields(fields(Report=text)).report == code


@pytest.mark.parametrize("text", ["1000", "-1000", "0027", "+5", "1.0", "abc", "2 7", "٣", "\uff13", "--4", "-"])
def test_report_that_is_not_such_an_integer_is_refused(text):
    with pytest.raises(InvalidReceipt, match="Report"):
        validate_fields(fields(Report=text))


# Timestamp1


@pytest.mark.parametrize(("text", "normalised"), [
    ("2002-08-27T13:38:00Z", "2002-08-27T13:38:00Z"),
    ("2002-08-27t13:38:00z", "2002-08-27T13:38:00Z"),
    ("2002-08-27T13:38:00.5Z", "2002-08-27T13:38:00.500000Z"),
    ("2002-08-27T13:38:00.000Z", "2002-08-27T13:38:00Z"),
    ("2002-08-27T13:38:00.123456789Z", "2002-08-27T13:38:00.123456Z"),
    ("2002-08-27T13:38:00+00:00", "2002-08-27T13:38:00Z"),
    ("2002-08-27T13:38:00-00:00", "2002-08-27T13:38:00Z"),
    ("2002-08-27T14:38:00+01:00", "2002-08-27T13:38:00Z"),
    ("2002-08-27T14:38:00+0100", "2002-08-27T13:38:00Z"),
    ("2002-08-27T08:08:00.25-05:30", "2002-08-27T13:38:00.250000Z"),
    ("2002-08-28T00:30:00+01:00", "2002-08-27T23:30:00Z"),
    ("2003-01-01T00:30:00+01:00", "2002-12-31T23:30:00Z"),
    ("2024-02-29T23:59:59-23:59", "2024-03-01T23:58:59Z"),
    ("0999-06-01T00:00:00Z", "0999-06-01T00:00:00Z"),
    ("9999-12-31T23:59:59Z", "9999-12-31T23:59:59Z"),
])
def test_timestamp_forms_are_normalised_to_utc(text, normalised):
    assert parse_timestamp(text) == normalised
    receipt = validate_fields(fields(Timestamp1=text))
    assert (receipt.timestamp, receipt.timestamp_raw) == (normalised, text)


@pytest.mark.parametrize("text", [
    "2002-08-27T13:38:00",  # no zone: which instant is meant cannot be known
    "2002-08-27 13:38:00Z",
    "27/08/2002 13:38:00",
    "2002-08-27T13:38Z",
    "2002-8-27T13:38:00Z",
    "2002-08-27T13:38:00.Z",
    "2002-08-27T13:38:00.1234567890Z",
    "2002-08-27T13:38:00+1:00",
    "\uff12\uff10\uff10\uff12-08-27T13:38:00Z",  # full-width digits: digits to str.isdigit, not here
    "2002-08-27T13:38:00Z trailing",
])
def test_timestamp_not_in_the_documented_form_is_refused(text):
    with pytest.raises(InvalidReceipt, match="Timestamp1"):
        parse_timestamp(text)


@pytest.mark.parametrize("text", [
    "2002-02-29T13:38:00Z",  # not a leap year
    "2002-02-30T13:38:00Z",
    "2002-13-01T13:38:00Z",
    "2002-08-27T24:00:00Z",
    "2002-08-27T13:60:00Z",
    "2002-08-27T13:38:60Z",
    "0000-01-01T00:00:00Z",
    "2002-08-27T13:38:00+24:00",
    "2002-08-27T13:38:00+01:60",  # would otherwise be read as +02:00
    "9999-12-31T23:59:59-01:00",  # past the year 9999 once in UTC
    "0001-01-01T00:30:00+01:00",  # before the year 1 once in UTC
])
def test_timestamp_that_is_no_real_instant_is_refused(text):
    with pytest.raises(InvalidReceipt, match="not a real date and time"):
        parse_timestamp(text)


def test_refusal_message_quotes_a_bounded_part_of_the_value():
    with pytest.raises(InvalidReceipt) as refused:
        parse_timestamp("x" * 10_000)

    assert len(str(refused.value)) < 120


@pytest.mark.parametrize(("instant", "text"), [
    (datetime(2002, 8, 27, 13, 38, tzinfo=UTC), "2002-08-27T13:38:00Z"),
    (datetime(2002, 8, 27, 13, 38, 0, 1, tzinfo=UTC), "2002-08-27T13:38:00.000001Z"),
    (datetime(2002, 8, 27, 14, 38, tzinfo=timezone(timedelta(hours=1))).astimezone(UTC), "2002-08-27T13:38:00Z"),
    (datetime(5, 1, 2, 3, 4, 5, tzinfo=UTC), "0005-01-02T03:04:05Z"),
])
def test_format_utc_has_one_fixed_width_form(instant, text):
    assert format_utc(instant) == text


# Report codes (SPEC section 2)


@pytest.mark.parametrize(("code", "label", "state", "final"), [
    (0, "Accepted by phone", "delivered", True),
    (-4, "Accepted by SMSC", "pending", False),
    (-3, "Delayed", "pending", False),
    (2, "Invalid login", "failed", True),
    (3, "Invalid number", "failed", True),
    (5, "Invalid number", "failed", True),
    (7, "Invalid number", "failed", True),
    (4, "Inactive number", "failed", True),
    (8, "Blacklisted number", "failed", True),
    (11, "Invalid characters", "failed", True),
    (19, "Invalid characters", "failed", True),
    (25, "Deleted by SMSC", "failed", True),
    (27, "Expired by SMSC", "failed", True),
    (28, "Abandoned by SMSC", "failed", True),
])
def test_builtin_codes_are_the_spec_table(code, label, state, final):
    assert ReportCodeTable().lookup(code) == ReportCode(code, label, state, final)


def test_spec_table_is_all_of_the_builtin_codes():
    assert sorted(BUILTIN_CODES) == [-4, -3, 0, 2, 3, 4, 5, 7, 8, 11, 19, 25, 27, 28]


@pytest.mark.parametrize("code", [1, 99, -1, -999, 999])
def test_unknown_code_is_state_unknown_not_an_error(code):
    known = ReportCodeTable().lookup(code)

    assert (known.code, known.state, known.final) == (code, "unknown", False)
    assert str(code) in known.label


def test_overrides_replace_and_add_codes():
    table = ReportCodeTable({27: ReportCode(27, "Gone", "failed", True), 99: ReportCode(99, "Held", "pending", False)})

    assert table.lookup(27).label == "Gone"
    assert table.lookup(99).state == "pending"
    assert table.lookup(0).label == "Accepted by phone"
    assert [code.code for code in table.items()] == sorted([*BUILTIN_CODES, 99])


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("99", "Held for review, pending, no", ReportCode(99, "Held for review", "pending", False)),
    (" -5 ", "Barred, by operator, failed, YES", ReportCode(-5, "Barred, by operator", "failed", True)),
    ("27", "Expired,failed,1", ReportCode(27, "Expired", "failed", True)),
])
def test_code_rows_are_read_with_the_label_allowed_to_hold_commas(key, value, expected):
    assert parse_code_row(key, value) == expected


@pytest.mark.parametrize(("key", "value", "reason"), [
    ("x", "Held, pending, no", "report code number"),
    ("1000", "Held, pending, no", "3 digits"),
    ("99", "Held, stuck, no", "state"),
    ("99", "Held, pending, maybe", "final"),
    ("99", "pending, no", "<label>, <state>, <final>"),
    ("99", ", pending, no", "<label>, <state>, <final>"),
])
def test_bad_code_rows_say_what_is_wrong(key, value, reason):
    with pytest.raises(ValueError, match=reason):
        parse_code_row(key, value)
