// The flight page's map: OpenStreetMap tiles when they load, and beneath them layers drawn
// from the page's own data (range rings, a latitude/longitude grid, airports, the track), so
// the flight is shown over the receiver's range even with no tiles at all (offline).
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("flight-data").textContent);
  var R = [data.receiver.lat, data.receiver.lon];
  // A transparent 1x1 PNG in place of a tile that failed: the layers below show through.
  var BLANK = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=";

  var map = L.map("map", { zoomSnap: 0.25, worldCopyJump: true });
  var tiles = L.tileLayer(data.tiles.url, {
    maxZoom: 18, attribution: data.tiles.attribution, errorTileUrl: BLANK, crossOrigin: false
  });
  var loaded = 0, failed = 0;
  // Leaflet reports the blank stand-in of a failed tile as loaded too: count real tiles only.
  tiles.on("tileload", function (e) { if (e.tile.src !== BLANK) { loaded += 1; } });
  tiles.on("tileerror", function () {
    failed += 1;
    if (loaded === 0 && failed >= 2) {
      document.getElementById("tiles-note").hidden = false;
      document.getElementById("map").classList.add("offline");
    }
  });
  tiles.addTo(map);

  // Range rings around the receiver, labelled with their distance.
  var rings = L.layerGroup();
  var step = data.ring_step_km;
  for (var km = step; km <= data.range_km * 1.0001 + step / 2; km += step) {
    L.circle(R, { radius: km * 1000, className: "range-ring", interactive: false,
                  fill: false, weight: 1 }).addTo(rings);
    var north = [R[0] + km / 111.2, R[1]];
    L.marker(north, { interactive: false, keyboard: false,
      icon: L.divIcon({ className: "ring-label", html: km + " km", iconSize: [64, 14],
                        iconAnchor: [32, 16] }) }).addTo(rings);
  }
  L.circleMarker(R, { radius: 5, className: "receiver", weight: 2 })
    .bindTooltip("receiver").addTo(rings);
  rings.addTo(map);

  // Latitude/longitude grid over the range (plus a margin).
  var grid = L.layerGroup();
  var g = data.grid_step_deg;
  var dLat = data.range_km * 1.5 / 111.2;
  var dLon = dLat / Math.max(Math.cos(R[0] * Math.PI / 180), 0.05);
  var lat0 = Math.floor((R[0] - dLat) / g) * g, lat1 = Math.ceil((R[0] + dLat) / g) * g;
  var lon0 = Math.floor((R[1] - dLon) / g) * g, lon1 = Math.ceil((R[1] + dLon) / g) * g;
  for (var la = lat0; la <= lat1 + 1e-9; la += g) {
    L.polyline([[la, lon0], [la, lon1]], { className: "grid-line", interactive: false, weight: 1 })
      .addTo(grid);
  }
  for (var lo = lon0; lo <= lon1 + 1e-9; lo += g) {
    L.polyline([[lat0, lo], [lat1, lo]], { className: "grid-line", interactive: false, weight: 1 })
      .addTo(grid);
  }
  grid.addTo(map);

  // Airports in range: the ones with an IATA code labelled, the rest as dots with a tooltip.
  var ports = L.layerGroup();
  data.airports.forEach(function (a) {
    var m = L.circleMarker([a.lat, a.lon], { radius: a.major ? 4 : 2, weight: 1,
      className: a.major ? "airport major" : "airport" });
    m.bindTooltip(a.code + " " + a.name, a.major ? { permanent: true, direction: "right",
      className: "airport-label", offset: [4, 0] } : {});
    m.addTo(ports);
  });
  ports.addTo(map);

  // The track, one polyline per altitude band.
  var trackLayer = L.featureGroup();
  data.track.forEach(function (run) {
    L.polyline(run.points, { color: run.colour, weight: 3, opacity: 0.95, className: "track" })
      .addTo(trackLayer);
  });
  if (data.start) {
    L.circleMarker(data.start, { radius: 5, className: "track-start", weight: 2 })
      .bindTooltip("first position").addTo(trackLayer);
  }
  if (data.end) {
    L.circleMarker(data.end, { radius: 5, className: "track-end", weight: 2 })
      .bindTooltip("last position").addTo(trackLayer);
  }
  trackLayer.addTo(map);

  if (data.track.length) {
    map.fitBounds(trackLayer.getBounds(), { padding: [24, 24], maxZoom: 12 });
  } else {
    map.setView(R, 8);
  }

  L.control.layers({ "OpenStreetMap": tiles }, {
    "range rings": rings, "grid": grid, "airports": ports, "track": trackLayer
  }, { collapsed: true }).addTo(map);
  L.control.scale({ imperial: false }).addTo(map);

  // Altitude legend.
  var legend = L.control({ position: "bottomright" });
  legend.onAdd = function () {
    var box = L.DomUtil.create("div", "altitude-legend");
    var title = L.DomUtil.create("div", "legend-title", box);
    title.textContent = "altitude";
    data.legend.forEach(function (entry) {
      var row = L.DomUtil.create("div", "legend-row", box);
      var swatch = L.DomUtil.create("span", "swatch", row);
      swatch.style.backgroundColor = entry.colour;
      var text = L.DomUtil.create("span", "", row);
      text.textContent = entry.label;
    });
    return box;
  };
  legend.addTo(map);
  document.getElementById("map").dataset.ready = "1";
})();
