"""Keeps TensorFlow's start-up chatter out of the CLI's output and the daemon's log.

Importing TensorFlow prints, straight to file descriptor 2 from C++, lines such as "oneDNN custom
operations are on ...", "This TensorFlow binary is optimized to use available CPU instructions
..." and absl's "All log messages before absl::InitializeLog() ...". ``TF_CPP_MIN_LOG_LEVEL``
silences only some of them (the absl ones are written before it is read), and Python's
``sys.stderr`` never sees them, so the first ``import tensorflow`` of the process runs with fd 2
pointed at a temporary file. Afterwards the lines that are TensorFlow's go to the log at DEBUG
(``ADSB_LOG_LEVEL=DEBUG`` shows them) and every other line - another thread's log record written
during the import - is written back to the real stderr unchanged.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import re
import sys
import tempfile
import threading
from types import ModuleType
from typing import Sequence

log = logging.getLogger("tensorflow.startup")

# Lines TensorFlow, XLA and absl write while loading: glog/absl-style "I0000 00:00:... file.cc:N]"
# records, absl's pre-init notice, and the continuation line of the CPU-feature notice.
_NATIVE_LINE = re.compile(
    r"^(?:[IWEF]\d{4} [\d:. ]+\s+\d+ [\w./-]+:\d+\]"
    r"|WARNING: All log messages before absl::InitializeLog\(\)"
    r"|To enable the following instructions:"
    r"|oneDNN custom operations are on"
    r"|This TensorFlow binary is optimized)")

_lock = threading.Lock()


def split_output(text: str) -> tuple[list[str], list[str]]:
    """(TensorFlow's start-up lines, every other line) of what was written during the import."""
    native: list[str] = []
    other: list[str] = []
    for line in text.splitlines(keepends=True):
        (native if _NATIVE_LINE.match(line) else other).append(line)
    return native, other


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with _lock:
            sys.stderr.flush()
            saved = os.dup(2)
            with tempfile.TemporaryFile(mode="w+b") as sink:
                os.dup2(sink.fileno(), 2)
                try:
                    self._loader.exec_module(module)
                finally:
                    os.dup2(saved, 2)
                    os.close(saved)
                    sink.seek(0)
                    native, other = split_output(sink.read().decode("utf-8", "replace"))
        for line in native:
            log.debug("%s", line.rstrip("\n"))
        if other:
            sys.stderr.write("".join(other))
            sys.stderr.flush()


class _Finder(importlib.abc.MetaPathFinder):
    """Wraps the loader of the top-level ``tensorflow`` package, once, then steps aside."""

    def find_spec(self, name: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if name != "tensorflow":
            return None
        uninstall()
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def install() -> None:
    """Quiet the process's first ``import tensorflow`` (no-op once TensorFlow is loaded)."""
    if "tensorflow" in sys.modules:
        return
    # TensorFlow's own INFO notices at run time (CPU features, XLA) are not wanted either; its
    # warnings and errors still show. A value the user set wins.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _Finder)]
