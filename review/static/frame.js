// The frame page: label by keyboard (1..9 classes, u unsure, s skip) and zoom/pan the image.
// Plain script, no libraries: the app must work on a plant network without internet.
"use strict";

(function labelKeys() {
  const form = document.getElementById("label-form");
  if (!form) return;
  let sent = false; // one answer per page: a held key must not post twice
  form.addEventListener("submit", () => { sent = true; });
  document.addEventListener("keydown", (event) => {
    if (sent || event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.target instanceof Element && event.target.closest("input, select, textarea")) return;
    const key = event.key.toLowerCase();
    const button = Array.from(form.querySelectorAll("button[data-key]"))
      .find((b) => b.dataset.key === key);
    if (!button) return;
    event.preventDefault();
    sent = true;
    button.classList.add("pressed");
    form.requestSubmit(button); // the button's name/value (the label) goes with the form
  });
})();

(function zoomAndPan() {
  const viewer = document.getElementById("viewer");
  const img = document.getElementById("frame-image");
  if (!viewer || !img) return;
  const MAX = 8; // times the image's own pixels
  let zoomed = false, fit = 1, scale = 1, x = 0, y = 0, drag = null, moved = false;

  function apply() {
    viewer.classList.toggle("zoomed", zoomed);
    img.style.transform = zoomed ? `translate(${x}px, ${y}px) scale(${scale})` : "";
  }

  function reset() { zoomed = false; apply(); }

  // Scale by `factor`, keeping the image point under (px, py) where it is.
  function zoomAt(px, py, factor) {
    if (!img.naturalWidth) return; // not loaded yet
    if (!zoomed) { // leave the centred layout from where the image is drawn now
      const v = viewer.getBoundingClientRect(), r = img.getBoundingClientRect();
      fit = r.width / img.naturalWidth;
      scale = fit; x = r.left - v.left; y = r.top - v.top;
      zoomed = true;
    }
    const next = Math.min(MAX, Math.max(fit, scale * factor));
    if (next <= fit + 1e-9) { reset(); return; }
    x = px - (px - x) * (next / scale);
    y = py - (py - y) * (next / scale);
    scale = next;
    apply();
  }

  function centre() {
    const v = viewer.getBoundingClientRect();
    return [v.width / 2, v.height / 2];
  }

  function point(event) {
    const v = viewer.getBoundingClientRect();
    return [event.clientX - v.left, event.clientY - v.top];
  }

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
    if (!drag || !zoomed) return;
    const dx = event.clientX - drag.x, dy = event.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 3) moved = true;
    x = drag.ox + dx; y = drag.oy + dy;
    apply();
  });
  viewer.addEventListener("pointerup", (event) => {
    if (drag && !moved && !zoomed) zoomAt(...point(event), 2.5);
    drag = null;
  });
  viewer.addEventListener("dblclick", reset);

  document.querySelectorAll("[data-zoom]").forEach((button) => {
    button.addEventListener("click", () => {
      const how = button.dataset.zoom;
      if (how === "fit") reset();
      else zoomAt(...centre(), how === "in" ? 1.5 : 1 / 1.5);
    });
  });
  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.key === "+" || event.key === "=") zoomAt(...centre(), 1.5);
    else if (event.key === "-") zoomAt(...centre(), 1 / 1.5);
    else if (event.key === "0") reset();
  });
})();
