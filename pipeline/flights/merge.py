"""One point per transmission when several receivers of a site heard the same aircraft.

Each receiver stores what it heard (its own evidence: coverage per receiver, exactly-once per
receiver, nothing lost when one of them replays a journal late). A transmission heard by two
receivers is then two rows with the same aircraft, the same decoded position and times that
differ by the receivers' clock disagreement (network and buffering delays in wall-clock mode).
The flight keeps the earliest copy: otherwise its positions count would grow with the number of
receivers and the track would hold zero-length steps between copies.

The decoded position identifies the transmission: an airborne position message encodes the
position to ~5 m (CPR, 17 bits), and an aircraft in flight moves farther than that between two
messages, so two different messages never decode to one position within a second or two, while
two receivers decoding one message get the same coordinates (to rounding, ~1e-12 degrees, far
below the 1e-5 degrees compared here).
"""

from __future__ import annotations

import numpy as np

# Positions equal to this many degrees (~1 m) are one decoded position.
QUANTUM_DEG = 1e-5


def first_copies(times_us: np.ndarray, lat: np.ndarray, lon: np.ndarray, source: np.ndarray,
                 offsets: np.ndarray, tolerance_us: int) -> np.ndarray:
    """Mask of the points to keep in ragged tracks (track k = points offsets[k]:offsets[k+1],
    each in time order; ``source``: the receiver of each point).

    Points of one track at one position, each within ``tolerance_us`` of the previous one,
    are one *cluster*: the copies of one transmission, or of a few (a receiver may report one
    position twice, an aircraft holding still sends the same one again). The cluster keeps the
    points of one receiver, the one with most points there (the earliest on a tie), and drops
    the other receivers' copies, so the flight has exactly the points one receiver hearing
    everything would have stored."""
    n = times_us.size
    keep = np.ones(n, dtype=bool)
    if n < 2:
        return keep
    track = np.repeat(np.arange(offsets.size - 1), np.diff(offsets))
    qlat = np.round(np.asarray(lat) / QUANTUM_DEG).astype(np.int64)
    qlon = np.round(np.asarray(lon) / QUANTUM_DEG).astype(np.int64)
    order = np.lexsort((times_us, qlon, qlat, track))
    t, a, o, k = times_us[order], qlat[order], qlon[order], track[order]
    src = np.asarray(source, dtype=np.int64)[order]
    joined = (k[1:] == k[:-1]) & (a[1:] == a[:-1]) & (o[1:] == o[:-1]) \
        & (t[1:] - t[:-1] <= tolerance_us)
    cluster = np.concatenate([[0], np.cumsum(~joined)])
    if cluster[-1] == n - 1:
        return keep                                   # no point has a neighbour: nothing to do
    # Points per (cluster, receiver); rows of the pairs appear in time order within a cluster,
    # so on equal counts the receiver heard first comes first.
    pair = cluster * (int(src.max()) + 1) + src
    _, first, inverse, count = np.unique(pair, return_index=True, return_inverse=True,
                                         return_counts=True)
    pair_cluster = cluster[first]
    # Best pair per cluster: most points, then earliest first point.
    rank = np.lexsort((first, -count, pair_cluster))
    head = np.concatenate([[True], pair_cluster[rank][1:] != pair_cluster[rank][:-1]])
    best = rank[head]                                 # one per cluster, clusters in order
    keep[order] = inverse.ravel() == best[cluster]
    return keep
