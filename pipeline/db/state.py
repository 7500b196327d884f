"""Keys of ``pipeline_state``, the table of small bits of service state."""

# The live ingest's heartbeat (counters, rates, connected), one row per receiver: written every
# 15 s by the service, read by ``adsb-pipeline status`` and the web pages.
INGEST_STATE_KEY = "ingest:{receiver_id}"
