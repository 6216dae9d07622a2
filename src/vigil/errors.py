"""Vigil's exceptions: each carries what failed, so the CLI can print one line."""

from __future__ import annotations

import os


class VigilError(Exception):
    """Base of every error Vigil reports to a user (one line, no traceback)."""


class BpfError(VigilError):
    """libbpf or the kernel refused: names the operation and the errno."""

    def __init__(self, what: str, errno: int, detail: str = ""):
        self.what = what
        self.errno = errno
        self.detail = detail
        super().__init__(f"{what}: {os.strerror(errno)} (errno {errno})")


class LayoutError(VigilError):
    """A record in a BPF object's BTF is not one Vigil can decode."""


class ConfigError(VigilError):
    """Bad user input: flags, config, rules, paths."""


class StoreError(VigilError):
    """The event store cannot be opened or written."""
