// The fcnseg serve page: sends an image to POST /predict and shows each of the answer's outputs
// with the view of its name, the model's task. VIEWS maps output names (fcnseg/serve/app.py,
// Predictor.outputs) to the functions that show them, each of which may return a note for the
// status line: a task with other outputs adds its view here.
"use strict";

const VIEWS = {
  segmentation: showSegmentation,
  edges: showMap,
  skeleton: showMap,
  detection: showDetection,
};

const BUSY = {
  segmentation: "segmenting",
  edges: "finding the edges of",
  skeleton: "finding the skeletons of",
  detection: "finding boxes in",
};

const state = { info: null, request: 0, opacity: 50, minScore: 0, upload: null, downloadUrl: null };

const $ = (selector, root = document) => root.querySelector(selector);

function setStatus(text, isError = false) {
  const status = $("#status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

function fail(message) {
  setStatus(message, true);
  $("#result").hidden = true;
  document.body.dataset.state = "error";
}

const megabytes = (bytes) => String(Number((bytes / 1e6).toPrecision(3)));

function duration(seconds) {
  if (seconds >= 1) return `${seconds.toFixed(2)} s`;
  return `${(seconds * 1000).toFixed(seconds < 0.01 ? 1 : 0)} ms`;
}

async function start() {
  // The API section's examples name this server as the browser reaches it.
  for (const url of document.querySelectorAll(".api-url")) {
    url.textContent = new URL(url.dataset.route, location.href);
  }
  try {
    const response = await fetch("info");
    state.info = await response.json();
  } catch (error) {
    fail(`cannot reach the fcnseg server: ${error.message}`);
    return;
  }
  const info = state.info;
  const classes = info.classes.length ? `, ${info.num_classes} classes` : "";
  $("#model").textContent =
    `${info.weights}: ${info.arch}, ${info.task}${classes}, ` +
    `preprocessing ${info.preprocess.name}, on ${info.device}`;
  state.minScore = info.min_score ?? 0;
  for (let i = 0; i < info.samples; i++) addSample(i);
  $("#file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) run(file, file.name);
  });
  const drop = $("#drop");
  document.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  document.addEventListener("dragleave", () => drop.classList.remove("over"));
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) run(file, file.name);
  });
  document.body.dataset.state = "ready";
}

function addSample(index) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "sample";
  button.title = `synthetic sample ${index}`;
  const thumbnail = document.createElement("img");
  thumbnail.src = `samples/${index}.png`;
  thumbnail.alt = `sample ${index}`;
  button.append(thumbnail);
  button.addEventListener("click", async () => {
    const response = await fetch(`samples/${index}.png`);
    run(await response.blob(), `sample-${index}.png`);
  });
  $("#samples").append(button);
}

async function post(file, name, withImage) {
  const form = new FormData();
  form.append("image", file, name);
  const query = new URLSearchParams({ format: "json" });
  if (withImage) query.set("with_image", "1");
  if ("min_score" in state.info) query.set("min_score", String(state.minScore));
  try {
    const response = await fetch(`predict?${query}`, { method: "POST", body: form });
    const body = await response
      .json()
      .catch(() => ({ error: `HTTP ${response.status} ${response.statusText}` }));
    return { ok: response.ok, body };
  } catch (error) {
    return { ok: false, body: { error: `the fcnseg server did not answer: ${error.message}` } };
  }
}

async function run(file, name) {
  const request = ++state.request; // a newer image makes this one's answer moot
  const info = state.info;
  state.upload = { file, name };
  if (file.size > info.max_upload_bytes) {
    fail(
      `${name} is ${megabytes(file.size)} MB, over the server's limit of ` +
        `${megabytes(info.max_upload_bytes)} MB (fcnseg serve --max-upload-mb)`,
    );
    return;
  }
  setStatus(`${BUSY[info.task]} ${name}…`);
  document.body.dataset.state = "busy";
  // The page shows the image as the browser reads it; for a format it cannot read, or one it
  // reads at another size (orientation), it shows the server's reading instead.
  let bitmap = await createImageBitmap(file, { colorSpaceConversion: "none" }).catch(() => null);
  let answer = await post(file, name, bitmap === null);
  if (answer.ok && bitmap && (bitmap.width !== answer.body.width || bitmap.height !== answer.body.height)) {
    bitmap = null;
    answer = await post(file, name, true);
  }
  if (request !== state.request) return;
  if (!answer.ok) {
    fail(answer.body.error);
    return;
  }
  const result = answer.body;
  if (bitmap === null) bitmap = await createImageBitmap(await (await fetch(result.image)).blob());
  await show(result, bitmap, name);
}

function drawImage(canvas, bitmap) {
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  canvas.getContext("2d").drawImage(bitmap, 0, 0);
  canvas.classList.toggle("small", bitmap.width < 360);
}

async function show(result, bitmap, name) {
  drawImage($("#image"), bitmap);
  $("#size").textContent = `${result.width} × ${result.height}`;
  const views = $("#views");
  views.replaceChildren();
  let notes = "";
  for (const [output, data] of Object.entries(result.outputs)) {
    if (output in VIEWS) notes += (await VIEWS[output](views, data, { bitmap, result, name })) ?? "";
  }
  $("#result").hidden = false;
  setStatus(
    `${name}: ${result.width} × ${result.height} pixels, forward pass ${duration(result.seconds)} ` +
      `on ${state.info.device}${notes}`,
  );
  document.body.dataset.state = "done";
}

function rgb(hex) {
  return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
}

// A canvas of the decoded image `picture` whose RGBA pixels `change(data, i)` has rewritten in place.
function pixelLayer(picture, change) {
  const canvas = document.createElement("canvas");
  canvas.width = picture.naturalWidth;
  canvas.height = picture.naturalHeight;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(picture, 0, 0);
  const pixels = context.getImageData(0, 0, canvas.width, canvas.height);
  for (let i = 0; i < pixels.data.length; i += 4) change(pixels.data, i);
  context.putImageData(pixels, 0, 0);
  return canvas;
}

// The label colours, transparent on background (id 0): over the image at opacity a they give
// (1 - a) * image + a * colour where there is a class, and the image elsewhere, as
// fcnseg.infer.overlay.overlay does.
function colourLayer(labels, background) {
  const [r, g, b] = rgb(background);
  return pixelLayer(labels, (data, i) => {
    if (data[i] === r && data[i + 1] === g && data[i + 2] === b) data[i + 3] = 0;
  });
}

function blend(canvas, bitmap, layer, opacity) {
  if (canvas.width !== bitmap.width || canvas.height !== bitmap.height) {
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
  }
  const context = canvas.getContext("2d");
  context.globalAlpha = 1;
  context.drawImage(bitmap, 0, 0);
  context.globalAlpha = opacity;
  context.drawImage(layer, 0, 0);
  canvas.classList.toggle("small", bitmap.width < 360);
}

// The overlay panel, first in a view: its canvas shows the layer over the image at the slider's opacity.
function showOverlay(view, bitmap, layer) {
  view.prepend(document.importNode($("#overlay-panel").content, true));
  const overlay = $(".overlay", view);
  const slider = $(".opacity-slider", view);
  const shown = $(".opacity-value", view);
  slider.value = state.opacity;
  const draw = () => {
    state.opacity = Number(slider.value);
    shown.textContent = `${slider.value}%`;
    blend(overlay, bitmap, layer, state.opacity / 100);
  };
  slider.addEventListener("input", draw);
  draw();
}

// A link that downloads `blob` as the upload's name with `suffix` for its extension.
async function offerDownload(link, blob, name, suffix) {
  if (state.downloadUrl) URL.revokeObjectURL(state.downloadUrl);
  state.downloadUrl = URL.createObjectURL(blob);
  link.href = state.downloadUrl;
  link.download = `${name.replace(/\.[^.]*$/, "")}${suffix}`;
}

function cell(className, text = "") {
  const td = document.createElement("td");
  td.className = className;
  td.textContent = text;
  return td;
}

// A legend row: the class's colour and name, then `cells`; greyed when the class is `absent`.
function classRow(className, color, absent, ...cells) {
  const row = document.createElement("tr");
  row.classList.toggle("absent", absent);
  const swatch = document.createElement("td");
  const chip = document.createElement("span");
  chip.className = "swatch";
  chip.style.backgroundColor = color;
  swatch.append(chip);
  row.append(swatch, cell("name", className), ...cells);
  return row;
}

async function showSegmentation(container, output, { bitmap, name }) {
  const classes = state.info.classes;
  const view = document.importNode($("#segmentation-view").content, true);
  const labels = $(".labels", view);
  labels.src = output.labels;
  await labels.decode();
  const layer = colourLayer(labels, classes[0].color);

  showOverlay(view, bitmap, layer);
  await offerDownload($(".download", view), await (await fetch(output.labels)).blob(), name, "_labels.png");

  const rows = $(".legend tbody", view);
  classes.forEach(({ name: className, color }, id) => {
    const share = output.shares[id];
    const percent = cell("share", `${(100 * share).toFixed(1)}%`);
    const bar = cell("bar");
    const fill = document.createElement("span");
    fill.style.width = `${100 * share}%`;
    fill.style.backgroundColor = color;
    bar.append(fill);
    rows.append(classRow(className, color, share === 0, percent, bar));
  });
  container.append(view);
}


// The map's colour with the map for alpha: over the image at opacity a it gives
// (1 - a m) * image + a m * colour at a pixel of map value m, as fcnseg.tasks.edges.red_overlay does.
function mapLayer(map, colour) {
  const [r, g, b] = rgb(colour);
  return pixelLayer(map, (data, i) => {
    data[i + 3] = data[i];
    data[i] = r;
    data[i + 1] = g;
    data[i + 2] = b;
  });
}

async function showMap(container, output, { bitmap, name }) {
  const info = state.info;
  const view = document.importNode($("#map-view").content, true);
  const map = $(".map", view);
  map.src = output.map;
  await map.decode();
  showOverlay(view, bitmap, mapLayer(map, info.overlay_color));
  $(".map-title", view).textContent = `${info.task} map`;
  await offerDownload($(".download", view), await (await fetch(output.map)).blob(), name, `_${info.task}.png`);
  $(".legend-text", view).textContent = info.legend;
  container.append(view);
}

async function showDetection(container, output, { name }) {
  const view = document.importNode($("#detection-view").content, true);
  const drawn = $(".drawn", view);
  drawn.src = output.drawn;
  await drawn.decode();

  const slider = $(".score-slider", view);
  const shown = $(".score-value", view);
  slider.value = output.min_score;
  shown.textContent = output.min_score.toFixed(2);
  slider.addEventListener("input", () => {
    shown.textContent = Number(slider.value).toFixed(2);
  });
  slider.addEventListener("change", () => {
    state.minScore = Number(slider.value);
    if (state.upload) run(state.upload.file, state.upload.name); // the server draws the boxes anew
  });

  const json = JSON.stringify(output.detections, null, 1);
  await offerDownload($(".download", view), new Blob([json], { type: "application/json" }), name, "_boxes.json");

  const rows = $(".legend tbody", view);
  state.info.classes.forEach(({ name: className, color }, id) => {
    if (id === 0) return; // background: no box is of it
    const count = output.counts[id];
    rows.append(classRow(className, color, count === 0, cell("count", String(count))));
  });
  container.append(view);
  const found = output.detections.length;
  return `, ${found} box${found === 1 ? "" : "es"} of score ≥ ${output.min_score.toFixed(2)}`;
}

start();
