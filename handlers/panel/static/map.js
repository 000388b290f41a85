/* The console's map: Leaflet with clustered pins coloured by status (the legend beside it);
   reports without a pin stand at their mahalle's centre (dashed). A click opens the report.
   Works without any tile server: the pins, clusters and filters need none. */
(function () {
  "use strict";
  var el = document.getElementById("map");
  var summary = document.getElementById("map-summary");
  if (!el || !window.L) { return; }
  var colours = JSON.parse(el.getAttribute("data-colours"));
  var centre = el.getAttribute("data-centre").split(",").map(Number);
  var map = L.map(el, {center: centre, zoom: 13, keyboard: true, preferCanvas: false});
  var tiles = el.getAttribute("data-tiles");
  if (tiles) {
    L.tileLayer(tiles, {maxZoom: 19, attribution: el.getAttribute("data-attribution")}).addTo(map);
  }
  var openLabel = el.getAttribute("data-open");
  // the district's outline: a sense of place even with no tiles
  var outline = JSON.parse(el.getAttribute("data-boundary") || "[]");
  if (outline.length) {
    L.polygon(outline, {color: "#0b5394", weight: 2, fill: true, fillColor: "#ffffff", fillOpacity: 0.6,
                        interactive: false}).addTo(map);
  }
  // clusters in one neutral colour (status colours are the pins'), sized by count
  var cluster = L.markerClusterGroup({
    showCoverageOnHover: false, maxClusterRadius: 50, chunkedLoading: true,
    iconCreateFunction: function (group) {
      var n = group.getChildCount();
      var size = n < 10 ? 34 : (n < 100 ? 40 : 48);
      return L.divIcon({html: "<span>" + n + "</span>", className: "cluster", iconSize: L.point(size, size)});
    }
  });
  map.addLayer(cluster);

  function pin(p) {
    var code = p[0], status = p[1], approx = p[4] === 1, late = p[5] === 1;
    var marker = L.circleMarker([p[2], p[3]], {
      radius: 8, weight: late ? 4 : 2, color: late ? "#b91c1c" : "#1b1f24",
      fillColor: approx ? "#ffffff" : (colours[status] || "#6b7280"), fillOpacity: approx ? 0.85 : 0.9,
      dashArray: approx ? "3 3" : null
    });
    marker.bindTooltip(openLabel.replace("{code}", code));
    marker.on("click", function () { window.location.href = "/panel/reports/" + encodeURIComponent(code); });
    return marker;
  }

  fetch(el.getAttribute("data-src"), {credentials: "same-origin", headers: {"Accept": "application/json"}})
    .then(function (r) { if (!r.ok) { throw new Error(String(r.status)); } return r.json(); })
    .then(function (data) {
      var markers = data.points.map(pin);
      cluster.addLayers(markers);
      if (markers.length) {
        map.fitBounds(cluster.getBounds(), {padding: [24, 24], maxZoom: 16});
      } else if (outline.length) {
        map.fitBounds(L.latLngBounds(outline), {padding: [12, 12]});
      }
      summary.textContent = data.summary;
      el.setAttribute("data-shown", String(data.shown));
    })
    .catch(function () { summary.textContent = el.getAttribute("data-failed"); });
}());
