"""The models table and the model files: save atomically, checksum, promote, load the active one."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from pipeline.db.schema import models

log = logging.getLogger(__name__)


class ModelFileError(RuntimeError):
    """The model file is missing, altered or cannot be loaded."""


@dataclass(frozen=True)
class ModelRow:
    id: int
    version: str
    path: str
    sha256: str | None
    threshold: float
    params: dict[str, Any]
    status: str
    data_to: dt.datetime | None = None     # end of the window it was trained on
    site: str | None = None                # the site it was trained on and scores


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def new_version(now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%S.%fZ")


def save_model(model, directory: Path, version: str) -> tuple[Path, str]:
    """Write ``<version>.keras`` atomically (temporary file in the same directory, then rename),
    so a scorer never opens half a file; returns (path, sha256)."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"model-{version}.keras"
    tmp = directory / f".tmp-{version}-{os.getpid()}.keras"
    try:
        model.save(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final, sha256_of(final)


def load_model(row: ModelRow):
    """The Keras model of a row, after checking the file's checksum."""
    import keras

    from pipeline.model import errors  # noqa: F401  (registers the loss for deserialisation)

    path = Path(row.path)
    if not path.is_file():
        raise ModelFileError(f"model {row.version}: file {path} is missing")
    if row.sha256 and sha256_of(path) != row.sha256:
        raise ModelFileError(f"model {row.version}: file {path} does not match its checksum")
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as e:  # noqa: BLE001 - any loader failure means the same thing here
        raise ModelFileError(f"model {row.version}: cannot load {path}: {e}") from e


def _row(r) -> ModelRow:
    return ModelRow(r.id, r.version, r.path, r.sha256, float(r.threshold), dict(r.params or {}),
                    r.status, r.data_to, r.site)


def active(conn: sa.Connection, site: str) -> ModelRow | None:
    """The site's active model (each site has its own, or none yet)."""
    r = conn.execute(sa.select(models).where(models.c.status == "active",
                                             models.c.site == site)).first()
    return _row(r) if r else None


def active_sites(conn: sa.Connection) -> list[str]:
    """Sites with an active model."""
    return list(conn.execute(sa.select(models.c.site).where(
        models.c.status == "active", models.c.site.is_not(None)).order_by(models.c.site)
    ).scalars())


def get(conn: sa.Connection, model_id: int) -> ModelRow:
    return _row(conn.execute(sa.select(models).where(models.c.id == model_id)).one())


def insert_candidate(conn: sa.Connection, values: dict[str, Any]) -> int:
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
             for k, v in values.items()}
    return conn.execute(models.insert().values(status="candidate", **clean)
                        .returning(models.c.id)).scalar_one()


def reject(conn: sa.Connection, model_id: int, reason: str) -> None:
    conn.execute(models.update().where(models.c.id == model_id)
                 .values(status="rejected", reason=reason))
    log.warning("model %s rejected: %s", model_id, reason)


def mark_failed(engine: sa.Engine, model_id: int, reason: str) -> None:
    """A model whose file cannot be used: recorded, and no longer active (scoring stops until a
    good model exists instead of failing every minute)."""
    with engine.begin() as conn:
        conn.execute(models.update().where(models.c.id == model_id)
                     .values(status="failed", reason=reason))
    log.error("model %s marked failed: %s", model_id, reason)


def activate(conn: sa.Connection, model_id: int, reason: str) -> None:
    """Retire the active model of this one's site and activate this one, in the caller's
    transaction (the unique partial index guarantees a single active model per site even with
    concurrent trainers)."""
    conn.execute(sa.text("LOCK TABLE models IN SHARE ROW EXCLUSIVE MODE"))
    site = conn.execute(sa.select(models.c.site).where(models.c.id == model_id)).scalar()
    conn.execute(models.update().where(models.c.status == "active",
                                       models.c.site.is_not_distinct_from(site))
                 .values(status="retired"))
    conn.execute(models.update().where(models.c.id == model_id).values(
        status="active", reason=reason, activated_at=sa.func.now()))
    log.info("model %s is now active: %s", model_id, reason)


def reactivate_previous(engine: sa.Engine, failed: ModelRow) -> bool:
    """After ``failed`` became unusable: activate the newest retired model whose file still
    checks out. Returns whether one was found."""
    with engine.begin() as conn:
        rows = conn.execute(sa.select(models).where(
            models.c.status == "retired", models.c.site.is_not_distinct_from(failed.site))
            .order_by(models.c.activated_at.desc().nulls_last())).all()
        for r in rows:
            row = _row(r)
            try:
                load_model(row)
            except ModelFileError as e:
                log.error("cannot fall back to model %s: %s", row.version, e)
                continue
            activate(conn, row.id, f"reactivated: model {failed.version} failed")
            return True
    log.error("no usable model left after %s failed; scoring waits for the next training",
              failed.version)
    return False
