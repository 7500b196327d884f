"""The pages: home, flights list, one flight, models; the verdict write; the pictures.

Page handlers are plain functions (Starlette runs them in its thread pool, so a query never
blocks the event loop); the verdict handler is async only to read the form and hands the
write to the pool.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from pipeline.flights import show
from pipeline.flights.clock import data_clock
from pipeline.web import airports, pictures, plots, queries as q, track
from pipeline.web.context import WebContext
from pipeline.web.report import heat
from pipeline.web.security import CSRF_COOKIE, WRITE_COOKIE

log = logging.getLogger(__name__)

PAGE_FLIGHTS = 50
PAGE_MODELS = 20
HOME_FLAGS = 60
HOME_CHANGES = 5               # traffic changes listed on the home page (the open one first)
PER_DAY_DAYS = 30
HISTOGRAM_DAYS = 7
NOTE_MAX = 1000
AUTHOR_MAX = 80
HEARTBEAT_STALE = dt.timedelta(minutes=2)   # the ingest writes one every 15 s
IMAGE_CACHE = "private, max-age=300"        # images change only when a flight is rescored
_ICAO = re.compile(r"^[0-9a-fA-F]{6}$")
# The direction pictures' colours (pipeline.flights.show), for the legend under them.
COMPASS = [(name, "#%02x%02x%02x" % tuple(int(v) for v in rgb))
           for name, rgb in zip(show.COMPASS, show.SECTOR_RGB)]
# The error pictures' colour ramp (pipeline.web.report.heat), as gradient stops for its legend.
HEAT = [(f"{v:g}", "#%02x%02x%02x" % tuple(int(c) for c in heat(np.array(v))))
        for v in np.linspace(0.0, 1.0, 9)]


def _web(request: Request) -> WebContext:
    return request.app.state.web


def message(request: Request, status: int, title: str, detail: str,
            back: str | None = None) -> Response:
    return _web(request).render(request, "message.html",
                                {"title": title, "detail": detail, "back": back},
                                status_code=status)


# ---- home --------------------------------------------------------------------------------------
def home(request: Request) -> Response:
    web = _web(request)
    with web.engine.connect() as conn:
        clock = data_clock(conn)
        today = q.day_start(clock)
        week = today - dt.timedelta(days=6)
        beat = q.heartbeat(conn, web.settings.receiver_id)
        aircraft = q.aircraft_now(conn, clock)
        flights_today = q.flights_since(conn, today)
        positions_today = q.positions_on(conn, web.settings.receiver_id, today.date())
        model = q.active_model(conn, web.settings.site_id)
        rate = q.flag_rates(conn, [model["id"]]).get(model["id"]) if model else None
        flags_today = q.flags(conn, today, None, HOME_FLAGS)
        flags_week = q.flags(conn, week, today, HOME_FLAGS)
        known_today = q.known_count(conn, today, None)
        known_week = q.known_count(conn, week, today)
        first_day = today - dt.timedelta(days=PER_DAY_DAYS - 1)
        per_day = q.flags_per_day(conn, first_day)
        histogram = None
        if model is not None and model["threshold"] is not None:
            edges, counts = q.score_histogram(conn, model["id"], float(model["threshold"]),
                                              clock - dt.timedelta(days=HISTOGRAM_DAYS))
            if sum(counts):
                histogram = plots.score_histogram(edges, counts, float(model["threshold"]))
        judged = q.precision(conn)
        traffic_changes = q.traffic_changes(conn, web.settings.site_id, HOME_CHANGES)
    receiver = None
    if beat is not None:
        age = q.utcnow() - beat.updated_at
        receiver = {"connected": bool(beat.values.get("connected")) and age < HEARTBEAT_STALE,
                    "stale": age >= HEARTBEAT_STALE, "age": age,
                    "source": beat.values.get("source", ""),
                    "messages_per_s": beat.values.get("messages_per_s"),
                    "positions_per_s": beat.values.get("positions_per_s")}
    return web.render(request, "home.html", {
        "clock": clock, "replay": q.utcnow() - clock > dt.timedelta(minutes=5),
        "today": today, "receiver": receiver, "aircraft": aircraft,
        "flights_today": flights_today, "positions_today": positions_today,
        "model": model, "rate": rate, "flags_today": flags_today, "flags_week": flags_week,
        "known_today": known_today, "known_week": known_week,
        "per_day": plots.flags_per_day(per_day, first_day.date(), today.date()),
        "per_day_total": sum(f for _, _, f in per_day), "histogram": histogram,
        "histogram_days": HISTOGRAM_DAYS, "precision": _precision(judged),
        "changes": traffic_changes})


def _precision(rows: list[tuple[str | None, str, int]]) -> dict[str, Any]:
    """Share of judged flags the user confirmed, overall and per carrying channel."""
    per: dict[str, dict[str, int]] = {}
    for channel, verdict, n in rows:
        slot = per.setdefault(channel or "–", {"anomalous": 0, "normal": 0})
        slot[verdict] = slot.get(verdict, 0) + n

    def share(d: dict[str, int]) -> dict[str, Any]:
        judged = d["anomalous"] + d["normal"]
        return {**d, "judged": judged, "precision": d["anomalous"] / judged if judged else None}

    total = {"anomalous": sum(d["anomalous"] for d in per.values()),
             "normal": sum(d["normal"] for d in per.values())}
    return {"total": share(total),
            "channels": [(c, share(d)) for c, d in sorted(per.items())]}


# ---- flights list ------------------------------------------------------------------------------
def _cursor(text: str | None) -> q.Cursor | None:
    if not text:
        return None
    m = re.fullmatch(r"(-?\d{1,19})_(\d{1,19})", text)
    if not m:
        raise HTTPException(400, f"bad page cursor {text!r}")
    us, fid = int(m.group(1)), int(m.group(2))
    try:
        when = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=us)
    except OverflowError:
        raise HTTPException(400, f"bad page cursor {text!r}") from None
    return q.Cursor(when, fid)


def cursor_text(row: Any) -> str:
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    return f"{(row['last_seen'] - epoch) // dt.timedelta(microseconds=1)}_{row['id']}"


def _day(text: str | None, name: str) -> dt.datetime | None:
    if not text:
        return None
    try:
        return dt.datetime.combine(dt.date.fromisoformat(text.strip()), dt.time(),
                                   dt.timezone.utc)
    except ValueError:
        raise HTTPException(400, f"{name}: expected a date YYYY-MM-DD, got {text!r}") from None


def parse_filter(params: Any) -> q.FlightFilter:
    since = _day(params.get("from"), "from")
    until = _day(params.get("to"), "to")
    if until is not None:
        until += dt.timedelta(days=1)            # "to" is inclusive: the whole day
    who = (params.get("q") or "").strip()
    icao = who.lower() if _ICAO.match(who) else None
    return q.FlightFilter(since=since, until=until, icao24=icao,
                          callsign=who.upper() or None,
                          flagged=params.get("flagged") in ("1", "on", "true"))


def flights_list(request: Request) -> Response:
    web = _web(request)
    params = request.query_params
    try:
        flt = parse_filter(params)
        older, newer = _cursor(params.get("before")), _cursor(params.get("after"))
    except HTTPException as e:
        return message(request, 400, "Bad filter", str(e.detail), back="/flights")
    with web.engine.connect() as conn:
        rows = q.flights_page(conn, flt, older_than=older, newer_than=newer,
                              limit=PAGE_FLIGHTS)
    more_older = more_newer = False
    if newer is not None:
        more_newer = len(rows) > PAGE_FLIGHTS
        rows = rows[1:] if more_newer else rows
        more_older = True
    else:
        more_older = len(rows) > PAGE_FLIGHTS
        rows = rows[:PAGE_FLIGHTS]
        more_newer = older is not None
    keep = {k: params[k] for k in ("from", "to", "q", "flagged") if params.get(k)}
    return web.render(request, "flights.html", {
        "rows": rows, "filter": keep,
        "older": {**keep, "before": cursor_text(rows[-1])} if more_older and rows else None,
        "newer": {**keep, "after": cursor_text(rows[0])} if more_newer and rows else None})


# ---- one flight --------------------------------------------------------------------------------
def _flight_id(request: Request) -> int:
    return int(request.path_params["flight_id"])


def status_of(f: Any, verdict: str | None) -> tuple[str, str]:
    """(css class, words) of a flight's standing: the user's verdict first, then the model's."""
    if verdict == "normal":
        return "known", "known: judged normal" + (", although flagged" if f["flagged"] else "")
    if f["flagged"]:
        return "flagged", "flagged" + (" · confirmed anomalous" if verdict == "anomalous" else "")
    if verdict == "anomalous":
        return "flagged", "judged anomalous (not flagged by the model)"
    if f["score"] is None:
        return "pending", "open: still being received" if f["state"] == "open" else "not scored"
    return "ordinary", "not flagged"


def _airports_in_range(web: WebContext, frame: tuple[float, float, float]
                       ) -> list[dict[str, Any]]:
    key = ("airports", frame)
    if key not in web.cache:
        lat, lon, range_km = frame
        web.cache[key] = [
            {"code": a.code, "name": a.name, "lat": a.lat, "lon": a.lon, "major": bool(a.iata)}
            for a in airports.within(lat, lon, 1.25 * range_km)]
    return web.cache[key]


def flight_page(request: Request) -> Response:
    web = _web(request)
    fid = _flight_id(request)
    with web.engine.connect() as conn:
        f = q.flight(conn, fid)
        if f is None:
            raise HTTPException(404, f"There is no flight {fid}.")
        pos = q.flight_positions(conn, fid)
        images = q.flight_images(conn, fid)
        history = q.score_history(conn, fid)
        labels = q.verdicts(conn, fid)
        before, after = q.same_aircraft(conn, f["icao24"], f["first_seen"], f["last_seen"])
        s = web.settings
        # The map is drawn in the flight's site frame, as its image was.
        frame = q.site_frame(conn, f["site"]) or (s.receiver_lat, s.receiver_lon, s.range_km)
    verdict = labels[0]["verdict"] if labels else None
    css, words = status_of(f, verdict)
    panels, panel_note = _panels(images)
    lat = [p.latitude for p in pos]
    lon = [p.longitude for p in pos]
    start = (lat[0], lon[0]) if pos else None
    end = (lat[-1], lon[-1]) if pos else None
    map_data = track.map_data(
        receiver=frame[:2], range_km=frame[2],
        track=track.runs(lat, lon, [p.altitude for p in pos]),
        airports=_airports_in_range(web, frame), start=start, end=end)
    pick = track.thin(len(pos), track.MAX_PROFILE_POINTS)
    times = [pos[i].time for i in pick]
    return web.render(request, "flight.html", {
        "f": f, "status_class": css, "status": words, "verdict": verdict, "labels": labels,
        "saved": request.query_params.get("saved"),
        "ratio": (f["score"] / f["threshold"]) if f["score"] is not None and f["threshold"]
        else None,
        "n_positions_shown": len(pos), "map_data": map_data, "frame_range_km": frame[2],
        "altitude": plots.profile(times, [pos[i].altitude for i in pick], "ft", "altitude"),
        "groundspeed": plots.profile(times, [pos[i].groundspeed for i in pick], "kt",
                                     "ground speed"),
        "near_start": airports.nearest(*start) if start else [],
        "near_end": airports.nearest(*end) if end else [],
        "sql": q.positions_sql(fid), "history": history, "before": before, "after": after,
        "panels": panels, "panel_note": panel_note, "headings": pictures.HEADINGS,
        "compass": COMPASS, "heat": HEAT})


def _panels(images: Any) -> tuple[list[tuple[str, tuple[str, ...]]], str | None]:
    """(channel, kinds drawable) rows of the picture table, and a note on what is missing."""
    if images is None or images["image"] is None:
        return [], "No track image yet: it is drawn when the flight is finished."
    try:
        original, rec = pictures.decode(images["image"], images["reconstruction"])
    except Exception as e:  # noqa: BLE001 - one bad stored image must not cost the page
        log.warning("web: stored image unreadable: %s", e)
        return [], f"The stored track image cannot be read ({e})."
    kinds = pictures.KINDS if rec is not None else ("original",)
    note = None
    if rec is None:
        note = ("No reconstruction stored: the model keeps one for flagged flights only."
                if images["reconstruction"] is None else
                "The stored reconstruction was made for another image format.")
    return [(c, kinds) for c in pictures.channels_of(original)], note


# ---- pictures ----------------------------------------------------------------------------------
def _png(data: bytes) -> Response:
    return Response(data, media_type="image/png", headers={"Cache-Control": IMAGE_CACHE})


def thumbnail(request: Request) -> Response:
    web = _web(request)
    with web.engine.connect() as conn:
        images = q.flight_images(conn, _flight_id(request))
    if images is None or images["image"] is None:
        raise HTTPException(404, "no track image for this flight")
    original, _ = pictures.decode(images["image"], None)
    return _png(pictures.thumbnail_png(original))


def panel(request: Request) -> Response:
    web = _web(request)
    channel, kind = request.path_params["channel"], request.path_params["kind"]
    with web.engine.connect() as conn:
        images = q.flight_images(conn, _flight_id(request))
    if images is None or images["image"] is None:
        raise HTTPException(404, "no track image for this flight")
    original, rec = pictures.decode(images["image"], images["reconstruction"])
    pixel = (images["error_row"], images["error_col"]) \
        if images["error_row"] is not None and images["error_col"] is not None else None
    try:
        data = pictures.panel_png(original, rec, channel, kind, images["channel"], pixel)
    except pictures.NoPicture as e:
        raise HTTPException(404, str(e)) from None
    return _png(data)


# ---- models ------------------------------------------------------------------------------------
def _excluded(value: Any) -> list[tuple[str, str]]:
    """models.excluded (JSON: why flights were left out of training) as (why, detail) lines."""
    out: list[tuple[str, str]] = []
    if not isinstance(value, dict):
        return out
    for key, item in value.items():
        name = key.replace("_", " ")
        if isinstance(item, dict):
            listed = item.get("flights")
            n = len(listed) if isinstance(listed, list) else None
            extra = ", ".join(f"{k.replace('_', ' ')} {v if not isinstance(v, float) else f'{v:.3g}'}"
                              for k, v in item.items() if k != "flights" and v is not None)
            out.append((name, (f"{n:,} flights" if n is not None else "") +
                        (f" ({extra})" if extra else "")))
        elif isinstance(item, list):
            out.append((name, f"{len(item):,} flights"))
        else:
            out.append((name, str(item)))
    return out


def models_page(request: Request) -> Response:
    web = _web(request)
    try:
        before = int(request.query_params["before"]) if request.query_params.get("before") \
            else None
    except ValueError:
        return message(request, 400, "Bad page", "before: expected a model id", back="/models")
    with web.engine.connect() as conn:
        rows = q.models_page(conn, before, PAGE_MODELS)
        more = len(rows) > PAGE_MODELS
        rows = rows[:PAGE_MODELS]
        rates = q.flag_rates(conn, [r["id"] for r in rows])
    # A retired model served until the next one (by activation) took over.
    activations = sorted((r["activated_at"], r["id"]) for r in rows if r["activated_at"])
    replaced = {a[1]: b for a, b in zip(activations, activations[1:])}
    items = []
    for r in rows:
        params = r["params"] or {}
        items.append({"m": r, "rate": rates.get(r["id"]), "excluded": _excluded(r["excluded"]),
                      "replaced_by": replaced.get(r["id"]),
                      "scored_groups": params.get("scored_groups"),
                      "folds": params.get("folds")})
    return web.render(request, "models.html", {
        "items": items, "older": rows[-1]["id"] if more and rows else None,
        "first_page": before is None})


# ---- verdicts ----------------------------------------------------------------------------------
def _text(form: Any, name: str, limit: int) -> str | None:
    value = form.get(name)
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value[:limit] or None


async def verdict(request: Request) -> Response:
    web = _web(request)
    fid = _flight_id(request)
    back = f"/flights/{fid}"
    async with request.form(max_files=0, max_fields=16) as form:
        refused = web.policy.refusal(
            host_header=request.headers.get("host", ""), origin=request.headers.get("origin"),
            referer=request.headers.get("referer"),
            fetch_site=request.headers.get("sec-fetch-site"),
            csrf_cookie=request.cookies.get(CSRF_COOKIE), csrf_form=_text(form, "csrf", 200),
            typed_token=_text(form, "token", 1000),
            token_cookie=request.cookies.get(WRITE_COOKIE))
        choice = _text(form, "verdict", 20)
        note = _text(form, "note", NOTE_MAX)
        author = _text(form, "author", AUTHOR_MAX) or "web"
        typed = _text(form, "token", 1000)
    if refused:
        log.warning("web: verdict on flight %d refused: %s", fid, refused)
        return message(request, 403, "Verdict not saved", refused, back=back)
    if choice not in q.VERDICTS:
        return message(request, 400, "Verdict not saved",
                       "Choose normal or anomalous.", back=back)

    def write() -> int | None:
        with web.engine.begin() as conn:
            if not q.flight_exists(conn, fid):
                return None
            return q.add_verdict(conn, fid, choice, note, author)

    label_id = await run_in_threadpool(write)
    if label_id is None:
        raise HTTPException(404, f"There is no flight {fid}.")
    log.info("web: flight %d judged %s by %s", fid, choice, author)
    response = RedirectResponse(f"{back}?saved={label_id}#verdict", status_code=303)
    if web.policy.token is not None and typed:
        response.set_cookie(WRITE_COOKIE, web.policy.token_cookie_value(), httponly=True,
                            samesite="strict", secure=request.url.scheme == "https", path="/")
    return response
