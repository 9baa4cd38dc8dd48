"""Success criteria: one grammar, checked at FRAME, judged at READ against metrics.json.

    criterion := [label] metric op operand
    label     := **text** [:]  |  WORD:                 (orchestration-kit's `**SC-1**:`, `C1:`)
    metric    := name[.name]...  (a metrics.json key; dotted for nested), optionally in backticks
    op        := >=  <=  >  <  ==  !=                  (≥ ≤ ≠ are read as >= <= !=)
    operand   := number  |  metric [+|- number]
    number    := 0.9, -1, 1e-3, .5: no units, no words after it

A line that begins (after its label) with `metric op` is a machine criterion and must be
exactly that: a typo, a unit or trailing words are errors, reported at FRAME. Any other line
is a criterion in words, which only an LLM READ agent can judge (docs/specs.md).
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import KitError

OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq, "!=": operator.ne}
_SYNONYMS = {"≥": ">=", "≤": "<=", "≠": "!="}
ACCEPTED = ("accepted forms: `metric op number` or `metric op other_metric [+|- number]`, op one of "
            ">= <= > < == !=, numbers as metrics.json holds them (0.9, not 90%), nothing after them")
_NAME = r"`?[A-Za-z_][\w\-]*(?:\.[A-Za-z_][\w\-]*)*`?"
_OP = r">=|<=|==|!=|>|<|≥|≤|≠"
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_LABEL = re.compile(r"^(?:\*\*[^*]+\*\*\s*:?|[A-Za-z][\w\-]*:)\s*")
_HEAD = re.compile(rf"^(?P<metric>{_NAME})\s*(?P<op>{_OP})\s*(?P<rest>.*)$")
_OFFSET = re.compile(rf"^(?P<metric>{_NAME})(?:\s*(?P<sign>[+-])\s*(?P<number>\S+))?(?P<rest>.*)$")


@dataclass
class Criterion:
    text: str
    line: int  # in the spec; 0 when not from a spec
    metric: str | None = None  # None: a criterion in words
    op: str | None = None
    threshold: float | None = None  # the number, or the offset added to `other`
    other: str | None = None  # the metric compared against
    error: str = ""  # why a machine criterion does not parse

    @property
    def in_words(self) -> bool:
        return self.metric is None and not self.error

    def describe(self) -> str:
        """Where it is and what is wrong with it, for FRAME's message."""
        return f"line {self.line}: {self.text!r}: {self.error}" if self.line else f"{self.text!r}: {self.error}"


def parse(text: str, line: int = 0) -> Criterion:
    body = text.strip().strip("_").strip()  # a template's _italic placeholder_ is words
    body = _LABEL.sub("", body, count=1) if _LABEL.match(body) and not _HEAD.match(body) else body
    m = _HEAD.match(body)
    if not m:
        return Criterion(text, line)
    c = Criterion(text, line, metric=m.group("metric").strip("`"), op=_SYNONYMS.get(m.group("op"), m.group("op")))
    rest = m.group("rest").strip()
    number = _NUMBER.match(rest)
    currency = rest[:1] in ("$", "€", "£")
    if number:
        c.threshold = float(number.group())
        c.error = _trailing(rest[number.end():], number.group())
    elif (o := _OFFSET.match(rest)) and not currency:
        c.other = o.group("metric").strip("`")
        if o.group("sign"):
            offset = _NUMBER.fullmatch(o.group("number"))
            if not offset:
                c.error = f"the offset {o.group('number')!r} is not a number"
            else:
                c.threshold = float(o.group("sign") + offset.group())
        c.threshold = c.threshold or 0.0
        c.error = c.error or _trailing(o.group("rest"), "")
    else:
        c.error = (f"a unit ({rest[:1]}) before the number" if currency
                   else f"expected a number or a metric after {c.op!r}, found {rest[:20]!r}" if rest
                   else f"nothing after {c.op!r}")
    return c


def _trailing(rest: str, number: str) -> str:
    """Why the text after an operand makes the criterion invalid ('' when nothing follows)."""
    if not rest.strip():
        return ""
    if rest[0] in ".0123456789eE":
        return f"{number + rest.split()[0]!r} is not a number"
    if rest.lstrip()[0] == "%" or (rest[0].isalpha() and len(rest.split()[0]) <= 3):
        unit = rest.split()[0]
        return f"a unit ({unit}) after the number; write it as metrics.json holds it (0.9, not 90%)"
    return f"words after the comparison ({rest.strip()[:40]!r}); put explanations outside the criterion"


def read_metrics(path: Path) -> dict | None:
    """metrics.json as a dict; None if absent; a one-line KitError if unreadable."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise KitError(f"{path} is not valid JSON ({e}); fix it or re-run the experiment") from None
    except OSError as e:
        raise KitError(f"cannot read {path}: {e.strerror}; check its permissions") from None
    if not isinstance(data, dict):
        raise KitError(f"{path} must hold a JSON object of metric names to values")
    return data


def lookup(metrics: dict, dotted: str) -> object:
    """A metric's value: the key itself, else the path through nested objects; None if absent."""
    if dotted in metrics:
        return metrics[dotted]
    value: object = metrics
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None  # type: ignore[arg-type]


@dataclass
class Check:
    criterion: Criterion
    observed: float | None = None
    target: float | None = None  # what it is compared with: the number, or the other metric plus the offset
    result: str = "UNCHECKABLE"  # PASS | FAIL | MISSING | UNCHECKABLE (in words) | INVALID

    @property
    def threshold_text(self) -> str:
        c = self.criterion
        if c.metric is None or c.error:
            return "-"
        if c.other is None:
            return f"{c.op} {c.threshold:g}"
        offset = f" {'+' if c.threshold >= 0 else '-'} {abs(c.threshold):g}" if c.threshold else ""
        return f"{c.op} {c.other}{offset}" + (f" (= {self.target:g})" if self.target is not None else "")


def evaluate(criteria: Iterable[str | Criterion], metrics: dict | None) -> tuple[str, list[Check]]:
    checks = []
    for item in criteria:
        c = parse(item) if isinstance(item, str) else item
        check = Check(c)
        if c.error:
            check.result = "INVALID"
        elif c.metric is not None:
            check.observed = _number(lookup(metrics or {}, c.metric))
            base = c.threshold if c.other is None else _number(lookup(metrics or {}, c.other))
            if c.other is not None and base is not None:
                base += c.threshold or 0.0
            check.target = base
            if check.observed is None or base is None:
                check.result = "MISSING"
            else:
                check.result = "PASS" if OPS[c.op](check.observed, base) else "FAIL"  # type: ignore[index]
        checks.append(check)
    return verdict(checks, metrics), checks


def verdict(checks: list[Check], metrics: dict | None) -> str:
    if metrics is None or metrics.get("aborted") or not checks:
        return "INCONCLUSIVE"
    if any(c.result == "FAIL" for c in checks):
        return "REFUTED"
    if all(c.result == "PASS" for c in checks):
        return "CONFIRMED"
    return "INCONCLUSIVE"
