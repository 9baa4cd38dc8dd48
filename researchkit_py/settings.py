"""Settings: command-line flag > environment > .orchestration-kit.env > built-in default.

One `Settings` object is built per process (by its entry point) and passed down; nothing
else in the package reads the environment, except the VM agent's entry, which reads its
own few variables in one place. The env file holds `KEY=value` lines; nothing in it is
executed. The one expansion understood is the idiom `KEY="${KEY:-default}"`, which means
"default" (the environment already wins over the file).

Standard library only: the VM agent ships this module.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from .errors import KitError

ENV_FILE = ".orchestration-kit.env"
_LINE = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_DEFAULT_IDIOM = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*):?-(.*)\}$")
_TRUE = ("1", "true", "yes", "on")


# Every setting the kit reads, with its default ("" where unset means "decided in code" or
# "off"); each cloud adds its own (clouds/*/cloud.py). docs/settings.md documents them all,
# and the tests check that the two agree and that the code reads no other.
DEFAULTS: dict[str, str] = {
    "COMPUTE_TARGET": "local",
    "EXP_AGENT": "",
    "EXP_PROJECT_ROOT": "",
    "KIT_STATE_DIR": ".kit-state",
    "EXP_LOG_DIR": "",
    "RESULTS_ROOT": "results",
    "DATA_DIR": "data",
    "ORCHESTRATION_KIT_ROOT": "",
    "EXP_TIME_BUDGET": "",
    "EXP_PHASE_BUDGET": "1800",
    "EXP_WATCH_FOLLOW": "1",
    "API_TIMEOUT_MS": "300000",
    "CLAUDE_CODE_MAX_RETRIES": "3",
    "EXP_AGENT_VERSION": "",
    "EXP_RESULTS_LOCKED": "",
    "MAX_GPU_HOURS": "4",
    "RK_BACKEND": "",
    "RK_BUCKET": "",
    "RK_RESULTS_SUBDIR": "results",
    "RK_MAX_BUNDLE_MB": "200",
    "RK_POLL_SECONDS": "",
    "RK_HEARTBEAT_SECONDS": "",
    "RK_SELF_DELETE_WAIT": "",
    "RK_CANCEL_WAIT": "",
    "RK_REAP_INTERVAL": "300",
    "RK_STATE_HOME": "",
    "RK_CACHE_HOME": "",
    "RK_ENV_CACHE": "",
    "RK_VM_PYTHON": "",
    "RK_PRICE_PER_HOUR": "",
    "RK_GPU_DRIVER_WAIT": "300",
    "RK_STORAGE_RETRIES": "6",
    "RK_STORAGE_BACKOFF": "0.5",
    "RK_TRANSFER_THREADS": "",
    "RK_NO_PROGRESS": "",
    "RK_DETACHED_COMMAND": "",
    "RK_ARTIFACT_BUCKET": "",
    "RK_PREFLIGHT_BACKEND": "ec2",
    "RK_LOCAL_MEMORY_GB": "",
    "RK_LOCAL_MAX_HOURS": "1",
    "RK_LOCAL_GRACE": "5",
    "RK_KEEP_VM_DIR": "",
    "UV_INDEX_URL": "",
}


def parse_env_file(path: Path) -> dict[str, str]:
    """Parse KEY=value lines. Raise KitError (naming file and line) on anything else."""
    rel = os.path.relpath(path)
    shown = str(path) if rel.startswith("..") else rel  # as the user would name it
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        raise KitError(f"cannot read {shown}: {e.__class__.__name__}; fix its permissions or encoding") from e
    values: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            raise KitError(f"{shown}:{n}: expected KEY=value, got {raw.strip()[:40]!r}")
        key, value = m.group(1), _unquote(m.group(2).strip())
        if "$(" in value or "`" in value:
            raise KitError(f"{shown}:{n}: {key} contains a command substitution; values are literal, write the value itself")
        d = _DEFAULT_IDIOM.match(value)
        if d:
            value = d.group(2)
        values[key] = value
    return values


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    # an unquoted value may carry a trailing comment
    return re.sub(r"\s+#.*$", "", value)


class Settings(Mapping[str, str]):
    """Flags over environment over env file over the documented defaults, read once.

    `environ` is the environment this process was given (what child processes inherit);
    `root` the project directory, whose .orchestration-kit.env is read (none on a VM)."""

    def __init__(self, root: Path | None = None, environ: Mapping[str, str] | None = None, *,
                 read_file: bool = True, flags: Mapping[str, str] | None = None):
        self.environ: dict[str, str] = dict(os.environ if environ is None else environ)
        self.root = Path(root or self.environ.get("EXP_PROJECT_ROOT") or os.getcwd()).resolve()
        self._file = parse_env_file(self.root / ENV_FILE) if read_file else {}
        self._flags = {k: v for k, v in (flags or {}).items() if v not in (None, "")}
        if "RK_MAX_HOURS" in self.environ or "RK_MAX_HOURS" in self._file:
            raise KitError("RK_MAX_HOURS is now called MAX_GPU_HOURS; rename it in .orchestration-kit.env "
                           "or your environment")

    def with_flags(self, **flags: str | None) -> Settings:
        """The same settings with command-line flags on top (None or "" means not given)."""
        new = copy.copy(self)
        new._flags = {**self._flags, **{k: v for k, v in flags.items() if v not in (None, "")}}
        return new

    def __getitem__(self, key: str) -> str:
        for layer in (self._flags, self.environ, self._file):
            if key in layer:
                return layer[key]
        if key in DEFAULTS:
            return DEFAULTS[key]
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(set(DEFAULTS) | set(self._file) | set(self.environ) | set(self._flags))

    def __len__(self) -> int:
        return len(set(self))

    def source(self, key: str) -> str:
        """Where a value comes from: flag, environment, file or default (for messages)."""
        for name, layer in (("flag", self._flags), ("environment", self.environ), (ENV_FILE, self._file)):
            if key in layer:
                return name
        return "default"

    def text(self, key: str, default: str = "") -> str:
        """The value, or `default` where it is unset or empty."""
        return self.get(key) or default

    def number(self, key: str, default: float | None = None) -> float:
        raw = self.get(key) or (None if default is None else str(default))
        try:
            return float(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            example = DEFAULTS.get(key) or "1"
            raise KitError(f"{key}={raw!r} is not a number; set it to e.g. {example}") from None

    def integer(self, key: str, default: int | None = None) -> int:
        return int(self.number(key, default))

    def flag(self, key: str) -> bool:
        return (self.get(key) or "").strip().lower() in _TRUE

    def max_hours(self, spec_budget: str | float | None = None) -> float:
        """The hard deadline of a run: flag > MAX_GPU_HOURS (environment, file) > the spec's
        max_gpu_hours > 4. One number: the VM's deadline and RUN's budget derive from it."""
        if "MAX_GPU_HOURS" not in self._flags and self.source("MAX_GPU_HOURS") == "default" and spec_budget:
            try:
                return float(spec_budget)
            except (TypeError, ValueError):
                raise KitError(f"the spec's max_gpu_hours {spec_budget!r} is not a number of hours") from None
        return self.number("MAX_GPU_HOURS")

    def state_home(self) -> Path:
        """Where the tool keeps its own state (local instances, the local bucket)."""
        if self.get("RK_STATE_HOME"):
            return Path(self["RK_STATE_HOME"]).expanduser()
        base = self.get("XDG_STATE_HOME") or str(Path(self.get("HOME") or "~").expanduser() / ".local" / "state")
        return Path(base) / "researchkit"

    def cache_home(self) -> Path:
        """What the tool may rebuild at any time (the runs a bucket listed, the embedded
        provider's environments): deleting it loses nothing."""
        if self.get("RK_CACHE_HOME"):
            return Path(self["RK_CACHE_HOME"]).expanduser()
        base = self.get("XDG_CACHE_HOME") or str(Path(self.get("HOME") or "~").expanduser() / ".cache")
        return Path(base) / "researchkit"
