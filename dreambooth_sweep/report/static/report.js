// Sortable tables: click a header; index.html#sort=<column> (or #sort=-<column>) sorts on load.
(function () {
  function key(cell) {
    var v = cell.getAttribute("data-v");
    if (v === null) { v = cell.textContent; }
    var n = parseFloat(v);
    return (v.trim() !== "" && isFinite(n)) ? [0, n] : [v.trim() === "" ? 2 : 1, v.toLowerCase()];
  }
  function sortBy(table, col, ascending) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[col]), y = key(b.cells[col]);
      if (x[0] !== y[0]) { return x[0] - y[0]; }
      var c = x[1] < y[1] ? -1 : (x[1] > y[1] ? 1 : 0);
      return ascending ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h, i) {
      if (i === col) { h.setAttribute("aria-sort", ascending ? "ascending" : "descending"); }
      else { h.removeAttribute("aria-sort"); }
    });
  }
  var tables = document.querySelectorAll("table.sortable");
  Array.prototype.forEach.call(tables, function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.addEventListener("click", function () {
        sortBy(table, col, th.getAttribute("aria-sort") !== "ascending");
      });
    });
  });
  var m = /sort=(-?)([^&]+)/.exec(window.location.hash);
  if (m) {
    Array.prototype.forEach.call(tables, function (table) {
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
        if (th.getAttribute("data-col") === decodeURIComponent(m[2])) { sortBy(table, col, m[1] !== "-"); }
      });
    });
  }
})();
