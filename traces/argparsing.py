"""argparse pieces the project's command lines share (`python -m traces`, `python -m cluster`)."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Examples kept as written, defaults shown."""


class OneLineErrorParser(argparse.ArgumentParser):
    def error(self, message: str):   # one line, no usage dump
        self.exit(2, f"{self.prog}: error: {message}\n")
