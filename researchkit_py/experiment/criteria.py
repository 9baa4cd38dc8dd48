"""Success criteria a machine can check: `metric >= 0.9` against metrics.json."""

from __future__ import annotations

import json
import operator
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import KitError

OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq, "!=": operator.ne}
_CRITERION = re.compile(r"^`?(?P<metric>[A-Za-z_][\w.\-]*)`?\s*(?P<op>>=|<=|==|!=|>|<)\s*(?P<value>-?[\d.]+(?:e-?\d+)?)")


@dataclass
class Check:
    text: str
    metric: str | None
    op: str | None
    threshold: float | None
    observed: object = None
    result: str = "UNCHECKABLE"  # PASS | FAIL | MISSING | UNCHECKABLE


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
    value: object = metrics
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def evaluate(criteria: list[str], metrics: dict | None) -> tuple[str, list[Check]]:
    checks = []
    for text in criteria:
        m = _CRITERION.match(text.strip())
        if not m:
            checks.append(Check(text, None, None, None))
            continue
        c = Check(text, m.group("metric"), m.group("op"), float(m.group("value")))
        c.observed = lookup(metrics or {}, c.metric)
        if isinstance(c.observed, bool) or not isinstance(c.observed, (int, float)):
            c.result = "MISSING"
        else:
            c.result = "PASS" if OPS[c.op](c.observed, c.threshold) else "FAIL"
        checks.append(c)
    return verdict(checks, metrics), checks


def verdict(checks: list[Check], metrics: dict | None) -> str:
    if metrics is None or metrics.get("aborted") or not checks:
        return "INCONCLUSIVE"
    if any(c.result == "FAIL" for c in checks):
        return "REFUTED"
    if all(c.result == "PASS" for c in checks):
        return "CONFIRMED"
    return "INCONCLUSIVE"
