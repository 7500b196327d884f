"""SIGKILL of the training child (as the kernel's out-of-memory killer would send it), in the
middle of fitting and in the middle of saving the model file: the previous model stays active
and loadable, no partial or temporary model file is left, and job_runs says what happened.

The scheduler runs the real ``adsb-pipeline train`` in a child process; to kill it at an exact
point, the child is started through a few lines that send SIGKILL to itself there (at the end of
the first epoch, or once the model file is written to its temporary name but not yet renamed).
"""

from __future__ import annotations

import sys

import pytest
import sqlalchemy as sa

import helpers_flights as hf
from pipeline.service import scheduler

KILL_AT = {
    "fit": '''
from pipeline.model import train
real = train._callbacks
def _callbacks(*args, **kwargs):
    import keras
    callbacks, stop = real(*args, **kwargs)
    class Kill(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                os.kill(os.getpid(), signal.SIGKILL)
    return callbacks + [Kill()], stop
train._callbacks = _callbacks
''',
    "save": '''
real = os.replace
def replace(src, dst):
    if os.path.basename(str(src)).startswith(".tmp-"):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst)
os.replace = replace
''',
}


# The smallest training that reaches the kill points: a fold of 15 flights is one batch an
# epoch, so the default MIN_STEPS and PATIENCE_STEPS (300 and 200 batches) kept each fold for
# 200 epochs (~40 s a fold); what is tested does not depend on how long the fit runs.
FAST_FIT = '''
from pipeline.model import train as _train
_train.MIN_STEPS, _train.PATIENCE_STEPS = 20, 10
'''


def killed_trainer(point: str) -> list[str]:
    return [sys.executable, "-c", "import os, signal, sys\n" + FAST_FIT + KILL_AT[point]
            + "from pipeline import cli\nsys.exit(cli.main(['train', '--quiet', '--plain']))"]


def activate_previous_model(engine: sa.Engine, settings) -> int:
    """An active model with its file, as a earlier training would have left it."""
    from pipeline.model import autoencoder, registry

    version = registry.new_version()
    path, digest = registry.save_model(autoencoder.build(hf.tiny_arch())[2],
                                       settings.models_path, version)
    with engine.begin() as conn:
        model_id = registry.insert_candidate(conn, {
            "version": version, "threshold": 1.0, "path": str(path), "sha256": digest,
            "params": {"architecture": hf.tiny_arch().to_json()}, "site": "default"})
        registry.activate(conn, model_id, "previous model")
    return model_id


@pytest.mark.slow
@pytest.mark.parametrize("point", ["fit", "save"])
def test_sigkill_of_the_trainer_keeps_the_previous_model(point, databases, tmp_path, caplog):
    from pipeline.model import registry

    url, _ = hf.sim_database(databases, n_normal=30, n_anomalies=0)
    # Two folds: the kill points do not depend on how many.
    settings = hf.model_settings(url, tmp_path / "data", train_budget_s=5, train_seed=1,
                                 train_folds=2)
    engine = sa.create_engine(url)
    previous = activate_previous_model(engine, settings)
    before = sorted(p.name for p in settings.models_path.iterdir())

    caplog.set_level("WARNING", logger="pipeline.service.scheduler")
    worker = scheduler.Worker(settings, engine, killed_trainer(point))
    assert worker.run("train", worker.train) == (False, None)

    with engine.connect() as conn:
        job = conn.execute(sa.text("SELECT * FROM job_runs WHERE job = 'train'")).one()
        models = conn.execute(sa.text("SELECT id, status FROM models")).all()
        active = registry.active(conn, "default")
    engine.dispose()
    left = sorted(p.name for p in settings.models_path.iterdir())
    removed = [r.getMessage() for r in caplog.records if "removed" in r.getMessage()]
    print(f"\ntrainer killed in the middle of the {point}: job_runs says {job.last_error!r}; "
          f"models {[tuple(m) for m in models]}; model files {left}; "
          f"partial files removed: {len(removed)}")
    assert job.last_ok is False and "killed by signal 9" in job.last_error
    assert [tuple(m) for m in models] == [(previous, "active")] and active.id == previous
    registry.load_model(active)                     # the file is intact: checksum and loading
    assert left == before                           # no partial or temporary model file
    assert len(removed) == (point == "save")        # the save left one; the scheduler removed it
