"""The processes that run the pipeline, on top of every other package.

* :mod:`pipeline.service.serve`        ``run`` / ``ingest --live`` / ``worker`` / ``web``:
  signals, threads, the ingest's heartbeat, metrics and the pages beside the worker;
* :mod:`pipeline.service.scheduler`    the worker: its jobs, their schedule and locks;
* :mod:`pipeline.service.metrics`      Prometheus ``/metrics`` and ``/healthz``;
* :mod:`pipeline.service.status`       ``adsb-pipeline status``, read from the database;
* :mod:`pipeline.service.demo`         ``adsb-pipeline demo``: a simulated receiver
  (:mod:`pipeline.service.beast_server`), an embedded database and the real service.
"""
