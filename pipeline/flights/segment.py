"""The gap rule: how one aircraft's positions are cut into flights, and where new positions go.

Pure functions over numpy arrays (times in integer microseconds since the Unix epoch, so that
they round-trip exactly to PostgreSQL ``timestamptz``); the database side is in
:mod:`pipeline.flights.store`.

A flight is a run of *airborne* positions of one aircraft. It ends at a silence longer than the
gap (as ``traffic``'s ``Flight.split``) and at a landing followed by a take-off, i.e. wherever
an on-ground position lies between two consecutive airborne ones. On-ground positions belong to
no flight. A flight shorter than ``MIN_DRAWN_POSITIONS`` / ``MIN_DRAWN_S`` is kept but never
drawn, so never scored or trained on (:func:`drawn`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np

US = 1_000_000  # microseconds per second

# A finished flight gets a track image (and so is scored and trained on) only with at least this
# many positions over at least this long. Fewer is an address seen a handful of times: the edge
# of coverage, a receiver glitch, or an address a spoofer invented. Its image is a dot or a
# stub, and thousands of them (a flood of invented aircraft) would teach the model that dots
# are ordinary traffic. A real flight across a receiver's range lasts minutes at one position a
# second or more.
MIN_DRAWN_POSITIONS = 20
MIN_DRAWN_S = 60.0


def segments(times: np.ndarray, ground: np.ndarray, gap_us: int) -> list[tuple[int, int]]:
    """Runs of airborne positions, as (first, last) index pairs into ``times`` (inclusive).

    ``times`` are sorted; ``ground`` is a sorted array of the aircraft's on-ground times (from
    this batch and from earlier ones). Consecutive positions more than ``gap_us`` apart, or with
    an on-ground time strictly between them, belong to different flights.
    """
    n = times.size
    if n == 0:
        return []
    cut = np.diff(times) > gap_us
    if ground.size:
        # Count the ground times <= each position: a landing between positions i and i+1
        # changes the count.
        below = np.searchsorted(ground, times, side="left")
        cut |= np.diff(below) > 0
    ends = np.flatnonzero(cut)
    starts = np.concatenate([[0], ends + 1])
    stops = np.concatenate([ends, [n - 1]])
    return list(zip(starts.tolist(), stops.tolist()))


def drawn(n_positions: np.ndarray, first_us: np.ndarray, last_us: np.ndarray) -> np.ndarray:
    """Which flights are long enough to be drawn (MIN_DRAWN_POSITIONS over MIN_DRAWN_S)."""
    return ((np.asarray(n_positions) >= MIN_DRAWN_POSITIONS)
            & (np.asarray(last_us) - np.asarray(first_us) >= round(MIN_DRAWN_S * US)))


def ground_between(ground: np.ndarray, a: int, b: int) -> bool:
    """True when an on-ground time lies strictly between ``a`` and ``b`` (a < b)."""
    if not ground.size:
        return False
    return bool(np.searchsorted(ground, b, "left") > np.searchsorted(ground, a, "right"))


@dataclass
class Known:
    """A flight already in the database, as far as placing new positions is concerned."""

    id: int
    first_us: int
    last_us: int
    n_positions: int
    open: bool


class Action(Enum):
    NEW = "new"          # an open flight of its own
    EXTEND = "extend"    # joins an open flight
    LATE = "late"        # its time is covered by a finished flight: a flight of its own, late


@dataclass
class Placement:
    action: Action
    first: int                                   # index range into the batch
    last: int
    into: list[int] = field(default_factory=list)   # EXTEND: open flights it joins (merged)


def place(times: np.ndarray, ground: np.ndarray, known: list[Known], gap_us: int
          ) -> list[Placement]:
    """Where each run of one aircraft's new airborne positions goes.

    A run within the gap of a *finished* flight arrived too late to be part of it: finished
    flights are never reopened, so the run becomes a flight of its own, marked late. Otherwise
    a run within the gap of an open flight (with no landing in between) joins it; a run that
    bridges two open flights joins them into one. Anything else starts a new open flight.
    """
    out: list[Placement] = []
    for first, last in segments(times, ground, gap_us):
        lo, hi = int(times[first]), int(times[last])
        near = [k for k in known if lo - gap_us <= k.last_us and k.first_us <= hi + gap_us]
        if any(not k.open for k in near):
            out.append(Placement(Action.LATE, first, last))
            continue
        joins = [k for k in near if not _landed_between(ground, k, lo, hi)]
        if joins:
            out.append(Placement(Action.EXTEND, first, last, [k.id for k in joins]))
            # The flight it joined now spans the run too; later runs see the new extent.
            head = joins[0]
            head.first_us = min([head.first_us, lo] + [k.first_us for k in joins])
            head.last_us = max([head.last_us, hi] + [k.last_us for k in joins])
            head.n_positions += last - first + 1 + sum(k.n_positions for k in joins[1:])
            for k in joins[1:]:
                known.remove(k)
        else:
            out.append(Placement(Action.NEW, first, last))
    return out


def _landed_between(ground: np.ndarray, k: Known, lo: int, hi: int) -> bool:
    if lo > k.last_us:
        return ground_between(ground, k.last_us, lo)
    if hi < k.first_us:
        return ground_between(ground, hi, k.first_us)
    return False   # overlaps the flight's own span
