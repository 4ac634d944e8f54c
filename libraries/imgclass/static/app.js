// The page posts the chosen photo to /score (same origin, multipart) and shows the reply as bars.
// Addresses are relative ("score", not "/score"), so the page also works behind a reverse proxy
// that serves the service under a path (https://host/classifier/).
"use strict";
const $ = (id) => document.getElementById(id);
let scoreKind = "svm_decision";
let maxUploadBytes = null; // the service's limit on a request body, from /info
// Bytes a multipart request adds to the file it carries, counted generously (as 6_callWebservice.py does).
const REQUEST_OVERHEAD = 1024 + 512;
let current = null; // the request whose reply the page shows: a newer photo aborts and replaces it
// A service started with IMGCLASS_API_KEY answers /score and /info with 401 until the key is sent.
// The key typed in is kept for this tab only (sessionStorage: gone when the tab closes).
const KEY_STORE = "imgclass-api-key";
let retryInfo = false; // what to ask again once a key is entered
let retryFile = null;

function storedKey() {
  try { return sessionStorage.getItem(KEY_STORE) || ""; } catch (e) { return ""; }
}

function keyHeaders() {
  const key = storedKey();
  return key ? { Authorization: "Bearer " + key } : {};
}

// After a 401: ask for the key (again, when the one sent was refused).
function askForKey(keyWasSent) {
  if (keyWasSent) {
    try { sessionStorage.removeItem(KEY_STORE); } catch (e) { /* nothing stored */ }
  }
  $("keynote").textContent = keyWasSent
    ? "The service did not accept that API key. Enter the service's key (IMGCLASS_API_KEY where it runs):"
    : "This service needs an API key. Enter it (IMGCLASS_API_KEY where it runs):";
  $("keyform").hidden = false;
  $("key").value = "";
  $("key").focus();
}

$("keyform").addEventListener("submit", (e) => {
  e.preventDefault();
  const key = $("key").value.trim();
  if (!key) return;
  if (!/^[\x20-\x7e]+$/.test(key)) { // fetch() refuses other characters in a header
    $("keynote").textContent = "An API key is letters, digits and punctuation only; copy the service's key again:";
    return;
  }
  try { sessionStorage.setItem(KEY_STORE, key); } catch (err) { /* kept for this page only, below */ }
  if (!storedKey()) { setStatus("This browser keeps no session storage: the key cannot be kept.", true); return; }
  $("keyform").hidden = true;
  if (retryInfo) { retryInfo = false; loadInfo(); }
  if (retryFile) { const file = retryFile; retryFile = null; classify(file); }
});

function megabytes(n) {
  return (n / 1e6).toFixed(1) + " MB (" + n + " bytes)";
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function showScores(result) {
  $("label").textContent = result.label;
  const entries = Object.entries(result.scores).sort((a, b) => b[1] - a[1]);
  const values = entries.map((e) => e[1]);
  // Probabilities fill the bar by value; SVM decision values are unbounded, so bars span min..max.
  const lo = scoreKind === "probability" ? 0 : Math.min(...values);
  const hi = scoreKind === "probability" ? 1 : Math.max(...values);
  const bars = $("bars");
  bars.textContent = "";
  entries.forEach(([name, value], i) => {
    const row = document.createElement("div");
    row.className = "bar" + (i === 0 ? " top" : "");
    row.dataset.class = name;
    const label = document.createElement("span");
    label.textContent = name;
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.display = "block";
    fill.style.width = (hi > lo ? Math.max(2, (100 * (value - lo)) / (hi - lo)) : 100) + "%";
    track.appendChild(fill);
    const num = document.createElement("span");
    num.className = "value";
    num.textContent = value.toFixed(3);
    row.append(label, track, num);
    bars.appendChild(row);
  });
  $("kind").textContent = scoreKind === "probability" ? "Scores are probabilities." : "Scores are SVM decision values (higher is more likely).";
}

async function classify(file) {
  if (!file) return;
  if (current) current.abort(); // a reply for an earlier photo must not label this one
  const request = new AbortController();
  current = request;
  $("result").hidden = true;
  $("preview").src = URL.createObjectURL(file);
  // Over the limit the service answers 413 and closes the connection before reading the upload,
  // which browsers often report as a network error: say so before sending anything.
  const bytes = file.size + REQUEST_OVERHEAD + 3 * new TextEncoder().encode(file.name).length;
  if (maxUploadBytes !== null && bytes > maxUploadBytes) {
    setStatus(file.name + ": " + megabytes(file.size) + ", too large: the service accepts uploads of at most "
      + megabytes(maxUploadBytes) + ". Choose a smaller photo.", true);
    current = null;
    return;
  }
  setStatus("Scoring " + file.name + "\u2026", false);
  const body = new FormData();
  body.append("images", file, file.name);
  const headers = keyHeaders();
  try {
    const reply = await fetch("score", { method: "POST", body, headers, signal: request.signal });
    const data = await reply.json().catch(() => ({ detail: reply.statusText }));
    if (request !== current) return; // another photo was chosen meanwhile
    current = null;
    if (reply.status === 401) { // scored again once the key is entered
      retryFile = file;
      setStatus(file.name + ": waiting for the service's API key.", true);
      askForKey("Authorization" in headers);
      return;
    }
    if (!reply.ok) {
      setStatus("Error " + reply.status + ": " + (data.detail || "request refused"), true);
      return;
    }
    showScores(data.results[0]);
    $("result").hidden = false;
    setStatus(file.name + ": " + data.results[0].label + " (model " + data.model_version + ")", false);
  } catch (err) {
    if (request !== current) return; // aborted for a newer photo
    current = null;
    setStatus("Cannot reach the service: " + err, true);
  }
}

$("file").addEventListener("change", (e) => classify(e.target.files[0]));
const drop = $("drop");
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
drop.addEventListener("drop", (e) => classify(e.dataTransfer.files[0]));

function loadInfo() {
  const headers = keyHeaders();
  fetch("info", { headers }).then((r) => {
    if (r.status === 401) {
      retryInfo = true;
      $("model").textContent = "The model description needs the service's API key.";
      askForKey("Authorization" in headers);
      return;
    }
    if (!r.ok) throw new Error("HTTP " + r.status);
    return r.json().then(showInfo);
  }).catch(() => { $("model").textContent = "Model description unavailable."; });
}

function showInfo(info) {
  scoreKind = info.score_kind;
  if (info.limits && typeof info.limits.max_upload_bytes === "number") maxUploadBytes = info.limits.max_upload_bytes;
  let text = "Classes: " + info.classes.join(", ") + " \u00b7 model " + info.model_version;
  if (info.metrics && typeof info.metrics.overall_accuracy === "number") {
    text += " \u00b7 test accuracy " + (100 * info.metrics.overall_accuracy).toFixed(1) + "%";
  }
  $("model").textContent = text;
}

loadInfo();
