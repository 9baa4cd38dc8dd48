"""The command-line parser every tool uses: argparse, with its errors as one line.

argparse answers a bad option with its usage and then the error, several lines; ours raise
UsageError instead, which run_cli prints as `prog: problem; see `prog --help``, exit 2. Not
in errors.py: that module travels to the VMs, which parse no options.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from .errors import UsageError


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}; see `{self.prog} --help`")

    def _get_formatter(self):
        # argparse's own asks shutil for the terminal's width, for every argument added; the
        # import of shutil (with bz2 and lzma) was a fifth of an unchanged re-pull (gcs-repull.md)
        return self.formatter_class(prog=self.prog, width=terminal_columns() - 2)


def terminal_columns() -> int:
    """The width of the terminal on standard output, else 80: shutil.get_terminal_size's, but
    for $COLUMNS (only settings.py reads the environment; bash does not export COLUMNS)."""
    try:
        columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
    except (AttributeError, ValueError, OSError):
        columns = 0
    return columns if columns > 0 else 80
