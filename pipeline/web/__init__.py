"""The pages people read. Served: flags, one flight on a map, the flights list, the models, and
the user's verdicts; ``create_app`` (app.py) builds the Starlette application, routes.py holds
the handlers, context.py what every request needs, server.py runs it with uvicorn inside the
service or alone (``adsb-pipeline web``). Written: report.py, the HTML report of the flagged
flights (``adsb-pipeline report``), whose colour scales the served pictures share."""
