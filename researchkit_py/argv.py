"""The command-line parser every tool uses: argparse, with its errors as one line.

argparse answers a bad option with its usage and then the error, several lines; ours raise
UsageError instead, which run_cli prints as `prog: problem; see `prog --help``, exit 2. Not
in errors.py: that module travels to the VMs, which parse no options.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

from .errors import UsageError


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}; see `{self.prog} --help`")
