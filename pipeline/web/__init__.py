"""The web pages the service serves: flags, one flight on a map, the flights list, the models,
and the user's verdicts. ``create_app`` (app.py) builds the Starlette application; server.py
runs it with uvicorn inside the service or alone (``adsb-pipeline web``)."""
