"""A strict parser of the Prometheus text exposition format 0.0.4, for the tests.

Written from the format's description (prometheus.io, "Exposition
formats"), independently of dlrd.metrics, so a rendering bug cannot hide
in a shared helper. Prometheus's own scraper is lenient in places; this
one raises PrometheusTextError at the first line a strict reading of the
format refuses, naming the line:

- every line ends with "\\n", the text included; UTF-8 only;
- `# HELP name text` (escapes \\\\ and \\n only) and `# TYPE name kind`, at most
  one each per family, both before the family's first sample; every
  family has a TYPE (dlrd's rule: the format lets untyped ones go without);
- metric and label names by the format's grammar, no `__` label names, no
  label twice in a series; label values with the escapes \\\\, \\" and \\n only;
- values as Go's ParseFloat reads them in the format: decimal or
  exponent numbers, +Inf, -Inf, NaN (not Python's "inf", "1_0" or "infinity");
- one family's samples contiguous; no series twice; sample names that fit
  the family's type (X for counter and gauge; X_bucket, X_sum, X_count for
  histogram X; X, X_sum, X_count for summary X);
- counters neither negative nor NaN;
- histograms: `le` on every _bucket and nowhere else, buckets in increasing
  le order with non-decreasing cumulative counts, a +Inf bucket equal to
  _count, and _sum and _count for every label set.

Stricter than the format where it is vague: no leading whitespace, no
whitespace inside the braces, blank lines refused.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
TIMESTAMP = re.compile(r"-?[0-9]+")
KINDS = ("counter", "gauge", "histogram", "summary", "untyped")
_LABEL_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}
_HELP_ESCAPES = {"\\": "\\", "n": "\n"}


class PrometheusTextError(ValueError):
    """The text breaks the format; the message names the line (1-based) and the rule."""


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float
    timestamp: int | None = None


@dataclass
class Family:
    name: str
    kind: str | None = None
    help: str | None = None
    samples: list[Sample] = field(default_factory=list)

    def get(self, name: str | None = None, **labels: str) -> float:
        """The value of the one sample named `name` (the family's name by default) with exactly `labels`."""
        wanted = name or self.name
        found = [sample.value for sample in self.samples if sample.name == wanted and sample.labels == labels]
        if len(found) != 1:
            raise KeyError(f"{wanted}{labels}: {len(found)} samples")
        return found[0]

    def series(self, name: str | None = None) -> list[Sample]:
        wanted = name or self.name
        return [sample for sample in self.samples if sample.name == wanted]


def parse_value(text: str) -> float:
    """A sample value, strictly: what Go's ParseFloat accepts in the format, not what Python's float() does."""
    if text in ("+Inf", "-Inf", "NaN"):
        return float(text)
    if not NUMBER.fullmatch(text):
        raise ValueError(f"not a sample value: {text!r}")
    return float(text)


def parse(data: bytes | str) -> dict[str, Family]:
    """Every family in `data`, in the order they appear; PrometheusTextError at the first breach."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise PrometheusTextError(f"not UTF-8: {error}") from None
    else:
        text = data
    if text and not text.endswith("\n"):
        raise PrometheusTextError("the text does not end with a line feed")
    families: dict[str, Family] = {}
    closed: set[str] = set()  # families whose samples are over: another family's line came since
    current: Family | None = None
    seen_series: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for number, line in enumerate(text.split("\n")[:-1] if text else [], start=1):
        try:
            if not line:
                raise ValueError("blank line")
            if line[0] in " \t":
                raise ValueError("leading whitespace")
            if line.startswith("#"):
                current = _comment(line, families, closed, current)
                continue
            sample = _sample_line(line)
            family = _family_of(sample.name, families)
            if family is None:
                raise ValueError(f"sample {sample.name} has no # TYPE line before it")
            if family is not current:
                if family.name in closed:
                    raise ValueError(f"samples of {family.name} are not contiguous")
                if current is not None:
                    closed.add(current.name)
                current = family
            _check_sample(family, sample)
            key = (sample.name, tuple(sorted(sample.labels.items())))
            if key in seen_series:
                raise ValueError(f"series {sample.name}{sample.labels} appears twice")
            seen_series.add(key)
            family.samples.append(sample)
        except ValueError as error:
            raise PrometheusTextError(f"line {number}: {error}: {line[:200]!r}") from None
    for family in families.values():
        if family.kind == "histogram":
            try:
                _check_histogram(family)
            except ValueError as error:
                raise PrometheusTextError(f"histogram {family.name}: {error}") from None
    return families


def _comment(line: str, families: dict[str, Family], closed: set[str], current: Family | None) -> Family | None:
    """A HELP or TYPE line (other comments are ignored); returns the family now current."""
    parts = line.split(" ", 3)
    if len(parts) < 3 or parts[0] != "#" or parts[1] not in ("HELP", "TYPE"):
        return current  # a plain comment
    keyword, name = parts[1], parts[2]
    if not METRIC_NAME.fullmatch(name):
        raise ValueError(f"bad metric name {name!r}")
    family = families.get(name)
    if family is None:
        family = families[name] = Family(name)
    if name in closed or (family.samples and family is current):
        raise ValueError(f"# {keyword} {name} after its samples")
    if current is not None and current is not family:
        closed.add(current.name)
    if keyword == "HELP":
        if family.help is not None:
            raise ValueError(f"second # HELP for {name}")
        family.help = _unescape(parts[3] if len(parts) == 4 else "", _HELP_ESCAPES)[0]
    else:
        if family.kind is not None:
            raise ValueError(f"second # TYPE for {name}")
        if len(parts) != 4 or parts[3] not in KINDS:
            raise ValueError(f"TYPE must be one of {', '.join(KINDS)}")
        for other in families.values():
            if other is not family and other.kind in ("histogram", "summary") and \
                    name in _derived_names(other.name, other.kind):
                raise ValueError(f"{name} clashes with the samples of {other.kind} {other.name}")
        family.kind = parts[3]
    return family


def _derived_names(name: str, kind: str | None) -> tuple[str, ...]:
    if kind == "histogram":
        return (f"{name}_bucket", f"{name}_sum", f"{name}_count")
    if kind == "summary":
        return (name, f"{name}_sum", f"{name}_count")
    return (name,)


def _family_of(sample_name: str, families: dict[str, Family]) -> Family | None:
    """The TYPE'd family a sample belongs to: itself, or the histogram/summary whose suffix it carries."""
    for suffix in ("_bucket", "_sum", "_count"):
        if sample_name.endswith(suffix):
            base = families.get(sample_name[: -len(suffix)])
            if base is not None and base.kind in ("histogram", "summary") and \
                    sample_name in _derived_names(base.name, base.kind):
                return base
    family = families.get(sample_name)
    return family if family is not None and family.kind is not None else None


def _check_sample(family: Family, sample: Sample) -> None:
    if sample.name not in _derived_names(family.name, family.kind):
        raise ValueError(f"{sample.name} is not a sample name of {family.kind} {family.name}")
    if family.kind == "counter" and (math.isnan(sample.value) or sample.value < 0):
        raise ValueError(f"counter {sample.name} is {sample.value}")
    if family.kind == "histogram":
        if (sample.name == f"{family.name}_bucket") != ("le" in sample.labels):
            raise ValueError("le belongs on every _bucket sample and on no other")
        if sample.name != f"{family.name}_sum" and (math.isnan(sample.value) or sample.value < 0):
            raise ValueError(f"a histogram count is {sample.value}")
    if family.kind == "summary" and (sample.name == family.name) != ("quantile" in sample.labels):
        raise ValueError("quantile belongs on every quantile sample and on no other")


def _check_histogram(family: Family) -> None:
    groups: dict[tuple[tuple[str, str], ...], dict[str, list[Sample]]] = {}
    for sample in family.samples:
        key = tuple(sorted((name, value) for name, value in sample.labels.items() if name != "le"))
        groups.setdefault(key, {}).setdefault(sample.name, []).append(sample)
    if not groups:
        raise ValueError("no samples")
    for key, parts in groups.items():
        where = f"{{{','.join(f'{name}={value!r}' for name, value in key)}}}"
        buckets = parts.get(f"{family.name}_bucket", [])
        if not buckets:
            raise ValueError(f"{where}: no _bucket samples")
        for suffix in ("_sum", "_count"):
            if len(parts.get(family.name + suffix, [])) != 1:
                raise ValueError(f"{where}: no {family.name}{suffix}")
        bounds = []
        for bucket in buckets:
            try:
                bounds.append(parse_value(bucket.labels["le"]))
            except ValueError:
                raise ValueError(f"{where}: le={bucket.labels['le']!r} is not a number") from None
        if any(math.isnan(bound) for bound in bounds) or bounds != sorted(bounds):
            raise ValueError(f"{where}: buckets not in increasing le order: {bounds}")
        counts = [bucket.value for bucket in buckets]
        if counts != sorted(counts):
            raise ValueError(f"{where}: cumulative bucket counts decrease: {counts}")
        if bounds[-1] != math.inf:
            raise ValueError(f"{where}: no le=\"+Inf\" bucket")
        count = parts[f"{family.name}_count"][0].value
        if counts[-1] != count:
            raise ValueError(f"{where}: the +Inf bucket ({counts[-1]}) is not _count ({count})")


def _sample_line(line: str) -> Sample:
    match = METRIC_NAME.match(line)
    if match is None:
        raise ValueError("no metric name")
    name = match.group()
    position = match.end()
    labels: dict[str, str] = {}
    if position < len(line) and line[position] == "{":
        labels, position = _label_set(line, position + 1)
    rest = line[position:]
    if not rest.startswith((" ", "\t")):
        raise ValueError("no blank between the series and its value")
    fields = rest.split()
    if len(fields) not in (1, 2):
        raise ValueError("a sample is a series, a value and at most a timestamp")
    value = parse_value(fields[0])
    timestamp = None
    if len(fields) == 2:
        if not TIMESTAMP.fullmatch(fields[1]):
            raise ValueError(f"bad timestamp {fields[1]!r}")
        timestamp = int(fields[1])
    return Sample(name, labels, value, timestamp)


def _label_set(line: str, position: int) -> tuple[dict[str, str], int]:
    """The labels after "{" up to the matching "}", and the position after it."""
    labels: dict[str, str] = {}
    while True:
        if line.startswith("}", position):
            return labels, position + 1
        match = LABEL_NAME.match(line, position)
        if match is None:
            raise ValueError(f"bad label name at column {position + 1}")
        label = match.group()
        if label.startswith("__"):
            raise ValueError(f"label name {label} is reserved")
        if label in labels:
            raise ValueError(f"label {label} twice")
        position = match.end()
        if not line.startswith('="', position):
            raise ValueError(f'label {label} is not followed by ="')
        value, position = _label_value(line, position + 2)
        labels[label] = value
        if line.startswith(",", position):
            position += 1  # the format allows a trailing comma before "}"
        elif not line.startswith("}", position):
            raise ValueError(f"expected , or }} at column {position + 1}")


def _label_value(line: str, position: int) -> tuple[str, int]:
    """The label value starting at `position` (after its opening quote), and the position past its closing one."""
    value, end = _unescape(line[position:], _LABEL_ESCAPES, "a label value", stop='"')
    if end is None:
        raise ValueError("unterminated label value")
    return value, position + end + 1


def _unescape(text: str, escapes: dict[str, str], what: str = "a HELP text",
              stop: str | None = None) -> tuple[str, int | None]:
    """`text` with its escapes resolved, up to the first unescaped `stop` (its index; None if not met)."""
    out = []
    position = 0
    while position < len(text):
        char = text[position]
        if char == stop:
            return "".join(out), position
        if char == "\\":
            escaped = text[position + 1: position + 2]
            if escaped not in escapes:
                raise ValueError(f"bad escape \\{escaped} in {what}")
            out.append(escapes[escaped])
            position += 2
            continue
        out.append(char)
        position += 1
    return "".join(out), None
