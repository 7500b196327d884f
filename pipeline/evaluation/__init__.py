"""Judging the model: as deployed beside the baselines (evaluate.py, baselines.py), on simulated
traffic (simulate.py), real flights rotated about the receiver (routes.py), or real traffic from
published samples, assembled into sites (samples.py, realsite.py)."""
