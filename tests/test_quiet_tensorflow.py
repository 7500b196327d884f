"""TensorFlow's start-up chatter stays out of the CLI's output and the daemon's log."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from pipeline.model.quiet import split_output

CHATTER = ("oneDNN custom operations", "absl::InitializeLog", "cpu_feature_guard",
           "This TensorFlow binary is optimized")


def _run(level: str, code: str = "") -> subprocess.CompletedProcess:
    """A fresh process (TensorFlow prints its notices once per process) that sets up logging as
    the CLI does, then imports the model package's TensorFlow modules."""
    script = textwrap.dedent(f"""
        import logging, threading
        from pipeline.cli import setup_logging
        setup_logging({level!r})
        {code}
        import pipeline.model.errors  # imports tensorflow and keras at module level
        import tensorflow as tf
        logging.getLogger("pipeline").info("after import: %d", int(tf.constant(2) + 1))
    """)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=180)


def test_import_prints_no_tensorflow_notices_at_info():
    out = _run("INFO")
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    assert not [c for c in CHATTER if c in text], text
    assert "after import: 3" in out.stderr      # our own log lines still reach stderr


def test_debug_level_shows_them_in_the_log_and_other_threads_lines_survive():
    # A log line another thread writes while TensorFlow loads (fd 2 is redirected then) must come
    # back out on stderr unchanged.
    writer = textwrap.indent(textwrap.dedent("""
        def _chatty():
            for i in range(40):
                logging.getLogger("pipeline.ingest").warning("ingest line %d", i)
                threading.Event().wait(0.05)
        t = threading.Thread(target=_chatty); t.start()
    """), " " * 8).strip()
    out = _run("DEBUG", writer + "\n        import atexit; atexit.register(t.join)")
    assert out.returncode == 0, out.stderr
    # Which notices TensorFlow prints depends on the CPU (oneDNN's only where AVX512_VNNI or AMX
    # is present), but absl's pre-init notice comes first whenever there is any, and none of them
    # may reach stderr other than through the log.
    assert "tensorflow.startup: WARNING: All log messages before absl::InitializeLog" in out.stderr
    raw = [line for line in out.stderr.splitlines()
           if any(c in line for c in CHATTER) and "tensorflow.startup" not in line]
    assert not raw, raw
    for i in range(40):
        assert f"ingest line {i}\n" in out.stderr, i


def test_split_output_keeps_foreign_lines():
    text = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
            "I0000 00:00:1796246948.357882   11683 port.cc:153] oneDNN custom operations are on.\n"
            "2026-12-02T21:00:00 INFO    pipeline: flush 5000 rows\n"
            "To enable the following instructions: AVX2 FMA, in other operations, rebuild.\n")
    native, other = split_output(text)
    assert len(native) == 3
    assert other == ["2026-12-02T21:00:00 INFO    pipeline: flush 5000 rows\n"]
