"""Our own error types, and the CLI boundary: run_cli turns them into one line on stderr and
an exit code; say() is how every command talks to the user (stderr, so stdout stays pipeable)."""

from __future__ import annotations

import errno
import random
import sys
import time
from collections.abc import Callable
from typing import NoReturn, TypeVar

T = TypeVar("T")


class KitError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""

    exit_code = 1


class UsageError(KitError):
    exit_code = 2


class NotFound(KitError):
    pass


class StorageError(KitError):
    """The bucket could not be reached or refused a request (after retries)."""


class ProviderError(KitError):
    """The compute provider refused or failed a request."""


class CapacityError(ProviderError):
    """The provider has no capacity or quota here; another zone/subnet may work."""


def retry(op: Callable[[], T], what: str, retries: int, backoff: float,
          transient: Callable[[BaseException], bool]) -> T:
    """op(), again after a growing pause (from `backoff` seconds, doubling, at most 10) while it
    fails transiently, at most `retries` more times: the one retry policy of every bucket
    request. A KitError passes (it says what to fix); any other failure becomes a StorageError
    that says what could not be done (`what`: "write KEY at URL")."""
    delay = backoff
    for attempt in range(retries + 1):
        try:
            return op()
        except KitError:
            raise
        except Exception as e:  # noqa: BLE001 - classified just below
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                raise  # this machine's disk is full or read-only, not the bucket: the caller says so
            if not transient(e) or attempt == retries:
                text = " ".join(str(e).split())
                short = f"{e.__class__.__name__}: {text[:200]}" if text else e.__class__.__name__
                raise StorageError(f"cannot {what}: {short}; check the bucket name, your credentials and network") from e
            time.sleep(delay * (1 + random.random() / 2))
            delay = min(delay * 2, 10)
    raise AssertionError("unreachable")


def emit_json(value) -> None:
    """A command's --json answer, on stdout."""
    import json

    print(json.dumps(value, indent=2, sort_keys=True))


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def one_line(text: str) -> str:
    """The message on one line whatever it quotes: control characters (a path's newline) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def run_cli(prog: str, main: Callable[[list[str]], int], argv: list[str] | None = None) -> NoReturn:
    """Run a CLI entry point: KitError becomes `prog: message` and its exit code, never a traceback."""
    args = sys.argv[1:] if argv is None else argv
    try:
        code = main(args)
    except KitError as e:
        print(f"{prog}: {one_line(str(e))}", file=sys.stderr)
        code = e.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        code = 130
    except OSError as e:  # this machine's files or network, where no message was written for it: still one line
        where = f" ({e.filename})" if e.filename else ""
        print(f"{prog}: {one_line(e.strerror or str(e))}{one_line(where)}; check that path and its permissions",
              file=sys.stderr)
        code = 1
    except BrokenPipeError:
        code = 0
    sys.exit(code)
