// lookalike web app: progressive enhancement over server-rendered pages.
// Results, grids and status are HTML fragments rendered by the server's templates.
(() => {
  "use strict";
  const $ = (selector, root = document) => root.querySelector(selector);
  const maxBytes = Number(document.body.dataset.maxBytes || 0);
  const escapeHtml = (text) => text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));

  // Facet form -> where-clauses in the API's filter syntax.
  function whereClauses() {
    const form = $("#facets");
    if (!form) return [];
    const clauses = [];
    form.querySelectorAll("fieldset").forEach((set) => {
      const column = set.dataset.column;
      if (set.dataset.kind === "values") {
        const values = [...set.querySelectorAll("input:checked")].map((i) => i.value);
        if (values.length) clauses.push(`${column}=${values.join("|")}`);
      } else {
        const min = set.querySelector(`[name="min:${column}"]`).value;
        const max = set.querySelector(`[name="max:${column}"]`).value;
        if (min !== "") clauses.push(`${column}>=${min}`);
        if (max !== "") clauses.push(`${column}<=${max}`);
      }
    });
    return clauses;
  }

  function params(pairs) {
    const q = new URLSearchParams(pairs);
    whereClauses().forEach((w) => q.append("where", w));
    return q.toString();
  }

  async function swap(target, response) {
    target.innerHTML = await response.text();
    target.removeAttribute("aria-busy");
  }

  function onFacetsChange(run) {
    const form = $("#facets");
    if (!form) return;
    form.addEventListener("change", run);
    form.addEventListener("input", (e) => { if (e.target.type === "number") { clearTimeout(form._t); form._t = setTimeout(run, 400); } });
    form.addEventListener("reset", () => setTimeout(run, 0));
    form.addEventListener("submit", (e) => { e.preventDefault(); run(); });
  }

  // ---- search by photo -----------------------------------------------------------------------
  const drop = $("#drop");
  if (drop) {
    const preview = $("#preview");
    const box = $("#crop-box");
    const results = $("#results");
    let file = null;
    let crop = null; // fractions of the photo: {x, y, w, h}
    let similarTo = null;

    const showMessage = (text) => { $("#message").innerHTML = text ? `<p class="error" role="alert">${escapeHtml(text)}</p>` : ""; };

    function setFile(f) {
      if (!f) return;
      showMessage("");
      if (maxBytes && f.size > maxBytes) {
        showMessage(`That photo is too large (${(f.size / 1048576).toFixed(1)} MB); the limit is ${(maxBytes / 1048576).toFixed(0)} MB.`);
        return;
      }
      file = f;
      similarTo = null;
      preview.parentElement.querySelectorAll(".garment-box, .garment-outline").forEach((el) => el.remove());
      clearCrop(false);
      preview.src = URL.createObjectURL(f);
      $("#query").hidden = false;
      run();
    }

    $("#file").addEventListener("change", (e) => setFile(e.target.files[0]));
    $("#camera").addEventListener("change", (e) => setFile(e.target.files[0]));
    drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); setFile(e.dataTransfer.files[0]); });
    drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("#file").click(); } });
    document.addEventListener("paste", (e) => {
      const item = [...(e.clipboardData ? e.clipboardData.items : [])].find((i) => i.kind === "file");
      if (item) setFile(item.getAsFile());
    });

    // Crop: drag a box on the photo (pointer events: mouse, pen and touch).
    let origin = null;
    const point = (e) => {
      const r = preview.getBoundingClientRect();
      return [clamp((e.clientX - r.left) / r.width, 0, 1), clamp((e.clientY - r.top) / r.height, 0, 1)];
    };
    let pressedAt = null;
    preview.addEventListener("pointerdown", (e) => { e.preventDefault(); origin = point(e); pressedAt = origin; preview.setPointerCapture(e.pointerId); });
    preview.addEventListener("pointermove", (e) => {
      if (!origin) return;
      const [x, y] = point(e);
      crop = { x: Math.min(origin[0], x), y: Math.min(origin[1], y), w: Math.abs(x - origin[0]), h: Math.abs(y - origin[1]) };
      Object.assign(box.style, { left: `${crop.x * 100}%`, top: `${crop.y * 100}%`, width: `${crop.w * 100}%`, height: `${crop.h * 100}%` });
      box.hidden = false;
    });
    preview.addEventListener("pointerup", () => {
      origin = null;
      if (!crop || (crop.w < 0.02 && crop.h < 0.02)) {  // a click, not a drag: pick the garment under it
        if (crop) clearCrop(false);
        if (pressedAt) selectGarmentAt(pressedAt[0], pressedAt[1]);
        return;
      }
      if (crop.w < 0.05 || crop.h < 0.05) { clearCrop(false); return; }
      $("#clear-crop").hidden = false;
      similarTo = null;
      run();
    });
    function clearCrop(rerun) {
      crop = null;
      box.hidden = true;
      $("#clear-crop").hidden = true;
      if (rerun) run();
    }
    $("#clear-crop").addEventListener("click", () => { similarTo = null; clearCrop(true); });
    $("#search-button").addEventListener("click", () => { similarTo = null; run(); });
    // Words: alone, or with the photo above them; the form also works without this script.
    const textInput = $("#q");
    const textForm = $("#text-form");
    if (textForm) textForm.addEventListener("submit", (e) => { e.preventDefault(); similarTo = null; run(); });

    async function photoToSend() {
      if (!crop) return file;
      const canvas = document.createElement("canvas");
      const sw = preview.naturalWidth * crop.w;
      const sh = preview.naturalHeight * crop.h;
      canvas.width = Math.max(1, Math.round(sw));
      canvas.height = Math.max(1, Math.round(sh));
      canvas.getContext("2d").drawImage(preview, preview.naturalWidth * crop.x, preview.naturalHeight * crop.y, sw, sh, 0, 0, canvas.width, canvas.height);
      return new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.92));
    }

    async function run() {
      results.setAttribute("aria-busy", "true");
      try {
        if (similarTo) {
          await swap(results, await fetch(`/ui/similar/${encodeURIComponent(similarTo)}?${params([["k", "24"]])}`));
        } else if (file) {
          const body = new FormData();
          body.append("image", await photoToSend(), file.name || "photo.jpg");
          const words = textInput ? textInput.value.trim() : "";
          if (words) body.append("text", words);  // "this, but in red": the photo with words
          // The whole photo: find its garments; a dragged crop is searched as it is.
          await swap(results, await fetch(`/ui/search?${params([["k", "24"], ["whole", crop ? "1" : "0"]])}`, { method: "POST", body }));
          drawGarments();
        } else if (textInput && textInput.value.trim()) {
          await swap(results, await fetch(`/ui/search/text?${params([["k", "24"], ["q", textInput.value.trim()]])}`));
        } else {
          results.removeAttribute("aria-busy");
        }
      } catch (err) {
        results.removeAttribute("aria-busy");
        showMessage("The search could not be sent. Is the server running?");
      }
    }

    // Shop the look: boxes and the selected garment's outline over the photo.
    function garmentChips() { return [...results.querySelectorAll(".garment-chip")]; }
    function drawGarments() {
      const area = preview.parentElement;
      area.querySelectorAll(".garment-box, .garment-outline").forEach((el) => el.remove());
      const look = $("#look", results);
      if (!look) return;
      const width = Number(look.dataset.width), height = Number(look.dataset.height);
      garmentChips().forEach((chip) => {
        const [x1, y1, x2, y2] = chip.dataset.box.split(",").map(Number);
        const frame = document.createElement("div");
        frame.className = "garment-box";
        frame.dataset.garment = chip.dataset.garment;
        Object.assign(frame.style, { left: `${(100 * x1) / width}%`, top: `${(100 * y1) / height}%`,
                                     width: `${(100 * (x2 - x1)) / width}%`, height: `${(100 * (y2 - y1)) / height}%` });
        const label = document.createElement("span");
        label.textContent = chip.dataset.group;
        frame.appendChild(label);
        area.appendChild(frame);
      });
      const selected = garmentChips().find((c) => c.getAttribute("aria-selected") === "true");
      if (selected) selectGarment(selected.dataset.garment);
    }
    function selectGarment(index) {
      const area = preview.parentElement;
      garmentChips().forEach((chip) => chip.setAttribute("aria-selected", String(chip.dataset.garment === index)));
      results.querySelectorAll(".garment-results").forEach((panel) => { panel.hidden = panel.id !== `garment-${index}`; });
      area.querySelectorAll(".garment-box").forEach((el) => el.classList.toggle("selected", el.dataset.garment === index));
      area.querySelectorAll(".garment-outline").forEach((el) => el.remove());
      const chip = garmentChips().find((c) => c.dataset.garment === index);
      if (chip && chip.dataset.outline) {
        const outline = document.createElement("img");
        outline.className = "garment-outline";
        outline.alt = "";
        outline.src = chip.dataset.outline;
        area.appendChild(outline);
      }
    }
    function selectGarmentAt(fx, fy) {
      const look = $("#look", results);
      if (!look) return;
      const x = fx * Number(look.dataset.width), y = fy * Number(look.dataset.height);
      const hits = garmentChips().map((chip) => ({ chip, box: chip.dataset.box.split(",").map(Number) }))
        .filter(({ box }) => x >= box[0] && x <= box[2] && y >= box[1] && y <= box[3])
        .sort((a, b) => (a.box[2] - a.box[0]) * (a.box[3] - a.box[1]) - (b.box[2] - b.box[0]) * (b.box[3] - b.box[1]));
      if (hits.length) selectGarment(hits[0].chip.dataset.garment);
    }

    results.addEventListener("click", (e) => {
      const chip = e.target.closest(".garment-chip");
      if (chip) { selectGarment(chip.dataset.garment); return; }
      const button = e.target.closest("[data-similar]");
      if (!button) return;
      similarTo = button.dataset.similar;
      run().then(() => results.scrollIntoView({ behavior: "smooth", block: "start" }));
    });
    onFacetsChange(run);
  }

  // ---- browse ----------------------------------------------------------------------------------
  const browse = $("#browse");
  if (browse) {
    const load = async (page) => {
      browse.setAttribute("aria-busy", "true");
      await swap(browse, await fetch(`/browse?${params([["fragment", "1"], ["page", String(page)]])}`));
    };
    browse.addEventListener("click", (e) => {
      const link = e.target.closest("[data-page]");
      if (link) { e.preventDefault(); load(link.dataset.page); }
    });
    onFacetsChange(() => load(1));
  }

  // ---- selects that submit their form when changed (no inline handlers: the CSP forbids them) ------
  document.querySelectorAll("select[data-autosubmit]").forEach((select) => {
    select.addEventListener("change", () => select.form.submit());
  });

  // ---- admin: refresh ingest status while something runs -----------------------------------------
  const status = $("#ingest-status");
  if (status) {
    setInterval(async () => {
      try { status.innerHTML = await (await fetch(status.dataset.poll)).text(); } catch (err) { /* server restarting */ }
    }, 1500);
  }
})();
