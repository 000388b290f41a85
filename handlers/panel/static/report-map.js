// The report page's small map: the pin (Leaflet, from xstatic); with the pin form, a click or a
// drag moves the pin and fills the form's latitude and longitude. Tiles only when a tile server
// is set; the pin works without one.
(function () {
  var el = document.getElementById("report-map");
  if (!el || !window.L) { return; }
  var at = [parseFloat(el.dataset.lat), parseFloat(el.dataset.lon)];
  var map = L.map(el, { keyboard: true }).setView(at, 16);
  if (el.dataset.tiles) {
    L.tileLayer(el.dataset.tiles, { maxZoom: 19, attribution: el.dataset.attribution || "" }).addTo(map);
  }
  L.Icon.Default.imagePath = "/static/leaflet/images/";
  var form = el.dataset.form ? document.getElementById(el.dataset.form) : null;
  var marker = L.marker(at, { draggable: !!form, keyboard: false }).addTo(map);
  if (!form) { return; }
  function put(latlng) {
    marker.setLatLng(latlng);
    form.querySelector("[name=lat]").value = latlng.lat.toFixed(6);
    form.querySelector("[name=lon]").value = latlng.lng.toFixed(6);
  }
  map.on("click", function (e) { put(e.latlng); });
  marker.on("dragend", function () { put(marker.getLatLng()); });
})();
