"""Settings: command-line flag > environment > .orchestration-kit.env > built-in default.

The env file holds `KEY=value` lines; nothing in it is executed. The one expansion we
understand is the idiom `KEY="${KEY:-default}"`, which means "default" (the environment
already wins over the file).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from .errors import KitError

ENV_FILE = ".orchestration-kit.env"
_LINE = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_DEFAULT_IDIOM = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*):?-(.*)\}$")

DEFAULTS: dict[str, str] = {
    "COMPUTE_TARGET": "local",
    "RK_BACKEND": "",
    "RK_BUCKET": "",
    "RK_RESULTS_SUBDIR": "results",
    "RK_MAX_HOURS": "4",
    "RK_MAX_BUNDLE_MB": "200",
}


def parse_env_file(path: Path) -> dict[str, str]:
    """Parse KEY=value lines. Raise KitError (naming file and line) on anything else."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        raise KitError(f"cannot read {path}: {e.__class__.__name__}; fix its permissions or encoding") from e
    values: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            raise KitError(f"{path}:{n}: expected KEY=value, got {raw.strip()[:40]!r}")
        key, value = m.group(1), _unquote(m.group(2).strip())
        if "$(" in value or "`" in value:
            raise KitError(f"{path}:{n}: {key} contains a command substitution; values are literal, write the value itself")
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


def project_root() -> Path:
    return Path(os.environ.get("EXP_PROJECT_ROOT") or os.getcwd()).resolve()


class Settings(Mapping[str, str]):
    """Environment over env file over defaults, read once."""

    def __init__(self, root: Path | None = None, environ: Mapping[str, str] | None = None):
        self.root = root or project_root()
        self._file = parse_env_file(self.root / ENV_FILE)
        self._env = dict(os.environ if environ is None else environ)

    def __getitem__(self, key: str) -> str:
        if key in self._env:
            return self._env[key]
        if key in self._file:
            return self._file[key]
        return DEFAULTS[key]

    def __iter__(self):
        return iter(set(DEFAULTS) | set(self._file) | set(self._env))

    def __len__(self) -> int:
        return len(set(self))

    def get_float(self, key: str, default: float | None = None) -> float:
        raw = self.get(key, None if default is None else str(default))
        try:
            return float(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise KitError(f"{key}={raw!r} is not a number; set it to e.g. {DEFAULTS.get(key, '1')}") from None

    def get_int(self, key: str, default: int | None = None) -> int:
        return int(self.get_float(key, default))

    def state_home(self) -> Path:
        """Where the tool keeps its own state (local instances, the local bucket)."""
        if self.get("RK_STATE_HOME"):
            return Path(self["RK_STATE_HOME"]).expanduser()
        base = self.get("XDG_STATE_HOME") or str(Path(self.get("HOME", "~")).expanduser() / ".local" / "state")
        return Path(base) / "researchkit"
