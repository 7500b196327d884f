"""The live ingest of ``adsb-pipeline ingest --live`` (pipeline.service.serve without the
worker) with the receiver's counter anchored at a given Unix time, so that a simulated past
week served faster than real time is stored at its simulated times. The CLI's ``--start-time``
only applies to capture files. Usage: python bench/_soak_ingest.py START_UNIX (ADSB_* from the
environment)."""

from __future__ import annotations

import sys
import threading

from pipeline import config
from pipeline.cli import setup_logging
from pipeline.service.serve import install_signal_handlers, serve


def main() -> int:
    settings = config.load()
    setup_logging(settings.log_level)
    stop = threading.Event()
    install_signal_handlers(stop)
    return serve(settings, stop, worker=False, start_time=float(sys.argv[1]))


if __name__ == "__main__":
    sys.exit(main())
