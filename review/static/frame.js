// The frame and adjudication pages: answer by keyboard (1..9 classes, u unsure, s skip;
// b back to the last answer), the image fitted to the viewer with zoom and pan, the defect
// map over it (m) and the class guide (g).
// Plain script, no libraries: the app must work on a plant network without internet.
"use strict";

// The key pressed for the page, lower-cased; null while typing in a field or with a modifier.
function pageKey(event) {
  if (event.ctrlKey || event.metaKey || event.altKey) return null;
  const target = event.target;
  if (target instanceof Element && target.closest("input:not([type=checkbox]), select, textarea")) {
    return null;
  }
  return event.key.length === 1 ? event.key.toLowerCase() : event.key;
}

// Call `action` when `key` is pressed for the page.
function onKey(key, action) {
  document.addEventListener("keydown", (event) => {
    if (pageKey(event) !== key) return;
    event.preventDefault();
    action();
  });
}

(function labelKeys() {
  const form = document.getElementById("label-form");
  if (!form) return;
  let sent = false; // one answer per page: a held key must not post twice
  form.addEventListener("submit", () => { sent = true; });
  document.addEventListener("keydown", (event) => {
    const key = pageKey(event);
    if (sent || !key) return;
    const button = Array.from(form.querySelectorAll("button[data-key]"))
      .find((b) => b.dataset.key === key);
    if (!button) return;
    event.preventDefault();
    sent = true;
    button.classList.add("pressed");
    form.requestSubmit(button); // the button's name/value (the label) goes with the form
  });
})();

(function backKey() {
  const link = document.getElementById("last-answer");
  if (link) onKey("b", () => { window.location.href = link.href; });
})();

// The image (and the defect map over it) in one stage, scaled and moved as one: it opens
// fitted to the viewer and centred; zoom keeps the point under the pointer in place.
(function zoomAndPan() {
  const viewer = document.getElementById("viewer");
  const stage = document.getElementById("stage");
  const img = document.getElementById("frame-image");
  if (!viewer || !stage || !img) return;
  const MAX = 8; // times the image's own pixels, or the fitted size when that is larger
  let fit = 1, scale = 1, x = 0, y = 0, drag = null, moved = false;

  const zoomed = () => scale > fit * 1.001;

  function apply() {
    viewer.classList.toggle("zoomed", zoomed());
    stage.style.transform = `translate(${x}px, ${y}px) scale(${scale})`;
  }

  function toFit() {
    const w = img.naturalWidth, h = img.naturalHeight;
    if (!w || !h) return; // not loaded yet: the load event fits it
    stage.style.width = `${w}px`;
    stage.style.height = `${h}px`;
    fit = Math.min(viewer.clientWidth / w, viewer.clientHeight / h);
    scale = fit;
    x = (viewer.clientWidth - w * fit) / 2;
    y = (viewer.clientHeight - h * fit) / 2;
    apply();
    viewer.classList.add("ready");
  }

  // Scale by `factor`, keeping the image point under (px, py) where it is.
  function zoomAt(px, py, factor) {
    if (!img.naturalWidth) return;
    const next = Math.min(Math.max(MAX, fit * MAX), scale * factor);
    if (next <= fit * 1.001) { toFit(); return; }
    x = px - (px - x) * (next / scale);
    y = py - (py - y) * (next / scale);
    scale = next;
    apply();
  }

  const centre = () => [viewer.clientWidth / 2, viewer.clientHeight / 2];

  function point(event) {
    const v = viewer.getBoundingClientRect();
    return [event.clientX - v.left, event.clientY - v.top];
  }

  if (img.complete && img.naturalWidth) toFit();
  else img.addEventListener("load", toFit);
  new ResizeObserver(() => { if (!zoomed()) toFit(); }).observe(viewer);

  viewer.addEventListener("wheel", (event) => {
    event.preventDefault();
    zoomAt(...point(event), event.deltaY < 0 ? 1.25 : 0.8);
  }, { passive: false });

  viewer.addEventListener("pointerdown", (event) => {
    drag = { x: event.clientX, y: event.clientY, ox: x, oy: y };
    moved = false;
    viewer.setPointerCapture(event.pointerId);
  });
  viewer.addEventListener("pointermove", (event) => {
    if (!drag || !zoomed()) return;
    const dx = event.clientX - drag.x, dy = event.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 3) moved = true;
    x = drag.ox + dx;
    y = drag.oy + dy;
    apply();
  });
  viewer.addEventListener("pointerup", (event) => {
    if (drag && !moved && !zoomed()) zoomAt(...point(event), 2.5);
    drag = null;
  });
  viewer.addEventListener("dblclick", toFit);

  document.querySelectorAll("[data-zoom]").forEach((button) => {
    button.addEventListener("click", () => {
      const how = button.dataset.zoom;
      if (how === "fit") toFit();
      else zoomAt(...centre(), how === "in" ? 1.5 : 1 / 1.5);
    });
  });
  onKey("+", () => zoomAt(...centre(), 1.5));
  onKey("=", () => zoomAt(...centre(), 1.5));
  onKey("-", () => zoomAt(...centre(), 1 / 1.5));
  onKey("0", toFit);
})();

// The defect map: off until the inspector turns it on (a first look of their own, not the
// model's); the choice is remembered in this browser from frame to frame.
(function defectMap() {
  const overlay = document.getElementById("defect-map");
  const box = document.getElementById("defect-map-toggle");
  if (!overlay || !box) return;
  const KEY = "lineqc.review.defectMap";

  function show(on, remember) {
    overlay.hidden = !on;
    box.checked = on;
    if (!remember) return;
    try { localStorage.setItem(KEY, on ? "on" : "off"); } catch (e) { /* private mode */ }
  }

  let stored = null;
  try { stored = localStorage.getItem(KEY); } catch (e) { /* private mode */ }
  show(stored === "on", false);
  box.addEventListener("change", () => show(box.checked, true));
  onKey("m", () => show(overlay.hidden, true));
})();

(function classGuide() {
  const dialog = document.getElementById("guide");
  if (!dialog) return;
  const toggle = () => { if (dialog.open) dialog.close(); else dialog.showModal(); };
  document.querySelectorAll("[data-guide]").forEach((b) => b.addEventListener("click", toggle));
  dialog.addEventListener("click", (event) => { if (event.target === dialog) dialog.close(); });
  onKey("g", toggle);
})();
