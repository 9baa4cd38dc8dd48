"""Our own error types, and the CLI boundary: run_cli turns them into one line on stderr and
an exit code; say() is how every command talks to the user (stderr, so stdout stays pipeable)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn


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
