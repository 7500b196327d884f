"""Judging the model on data: real traffic from published samples, assembled into sites."""
