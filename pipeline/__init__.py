"""ADS-B anomaly pipeline: receiver -> PostgreSQL -> flights -> track images -> autoencoder -> flags."""

__version__ = "0.1.0"
