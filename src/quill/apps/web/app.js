// quill's page: plain JavaScript, no build step. Chat streams from the OpenAI-compatible endpoint
// (fetch + ReadableStream, parsing the server-sent events by hand, since EventSource cannot POST);
// the arena asks the server for a blind battle and reveals the model names only after the vote.
"use strict";

const $ = (sel) => document.querySelector(sel);
const keyInput = $("#api-key");
keyInput.value = localStorage.getItem("quill-api-key") || "";
keyInput.addEventListener("change", () => localStorage.setItem("quill-api-key", keyInput.value));

function headers() {
  const h = { "Content-Type": "application/json" };
  if (keyInput.value) h["Authorization"] = "Bearer " + keyInput.value;
  return h;
}

async function api(path, body) {
  const res = await fetch(path, body === undefined ? { headers: headers() }
    : { method: "POST", headers: headers(), body: JSON.stringify(body) });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error((data.error && data.error.message) || res.statusText);
  return data;
}

// ---------------------------------------------------------------- tabs
const loaders = {};
for (const tab of document.querySelectorAll("nav [role=tab]")) {
  tab.addEventListener("click", () => {
    for (const t of document.querySelectorAll("nav [role=tab]")) {
      t.setAttribute("aria-selected", String(t === tab));
      $("#" + t.dataset.panel).hidden = t !== tab;
    }
    if (loaders[tab.dataset.panel]) loaders[tab.dataset.panel]();
  });
}

// ---------------------------------------------------------------- chat
let history = [];
let controller = null;

async function loadModels() {
  try {
    const data = await api("/v1/models");
    const select = $("#model-select");
    select.innerHTML = "";
    for (const m of data.data) select.add(new Option(m.id, m.id));
  } catch (err) { addMessage("error", "cannot list models: " + err.message); }
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  $("#chat-log").appendChild(div);
  $("#chat-log").scrollTop = $("#chat-log").scrollHeight;
  return div;
}

function numberOrNull(sel) {
  const v = $(sel).value;
  return v === "" ? null : Number(v);
}

// Reads `data: {...}` events from a streamed response and calls onDelta(text) for each content delta.
async function readSSE(response, onDelta) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const payload = line.slice(6);
        if (payload === "[DONE]") return;
        const chunk = JSON.parse(payload);
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
        if (delta && delta.content) onDelta(delta.content);
      }
    }
  }
}

async function sendChat(text) {
  history.push({ role: "user", content: text });
  addMessage("user", text);
  const out = addMessage("assistant", "");
  const body = { model: $("#model-select").value, messages: history, stream: true };
  const t = numberOrNull("#chat-temperature"), n = numberOrNull("#chat-max-tokens");
  if (t !== null) body.temperature = t;
  if (n !== null) body.max_tokens = n;
  body.form = $("#chat-form-select").value;  // "off": plain decoding, else form-aware (auto reads the request)
  controller = new AbortController();
  $("#chat-send").disabled = true;
  $("#chat-stop").disabled = false;
  let answer = "";
  try {
    const res = await fetch("/v1/chat/completions", { method: "POST", headers: headers(),
      body: JSON.stringify(body), signal: controller.signal });
    if (!res.ok) {
      const data = await res.json().catch(() => ({}));
      throw new Error((data.error && data.error.message) || res.statusText);
    }
    await readSSE(res, (delta) => { answer += delta; out.textContent = answer; });
    history.push({ role: "assistant", content: answer });
    out.dataset.done = "true";
  } catch (err) {
    history.pop();  // the question stays on screen but not in the history sent next time
    if (err.name === "AbortError") { history.push({ role: "user", content: text }, { role: "assistant", content: answer }); }
    else { out.className = "msg error"; out.textContent = err.message; }
  } finally {
    controller = null;
    $("#chat-send").disabled = false;
    $("#chat-stop").disabled = true;
  }
}

$("#chat-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("#chat-input").value.trim();
  if (!text || controller) return;
  $("#chat-input").value = "";
  sendChat(text);
});
$("#chat-input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("#chat-form").requestSubmit(); }
});
$("#chat-stop").addEventListener("click", () => controller && controller.abort());
$("#chat-reset").addEventListener("click", () => { history = []; $("#chat-log").innerHTML = ""; });

// ---------------------------------------------------------------- arena
let battleId = null;

loaders.arena = async () => {
  try {
    const info = await api("/arena/info");
    $("#arena-notice").hidden = info.ready;
    $("#arena-notice").textContent = info.message || "";
    $("#arena-go").disabled = !info.ready;
  } catch (err) { $("#arena-status").textContent = err.message; }
};

$("#arena-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const prompt = $("#arena-prompt").value.trim() || $("#arena-prompt").placeholder;
  $("#arena-go").disabled = true;
  $("#arena-votes").hidden = true;
  $("#arena-battle").hidden = true;
  $("#arena-reveal").textContent = "";
  $("#arena-name-a").textContent = $("#arena-name-b").textContent = "";
  $("#arena-status").textContent = "Both models are writing…";
  try {
    const b = await api("/arena/battle", { prompt });
    battleId = b.id;
    $("#arena-a").textContent = b.output_a;
    $("#arena-b").textContent = b.output_b;
    $("#arena-battle").hidden = false;
    $("#arena-votes").hidden = false;
    for (const btn of document.querySelectorAll("#arena-votes button")) btn.disabled = false;
    $("#arena-status").textContent = "Which poem is better?";
  } catch (err) { $("#arena-status").textContent = err.message; }
  finally { $("#arena-go").disabled = false; }
});

for (const btn of document.querySelectorAll("#arena-votes button")) {
  btn.addEventListener("click", async () => {
    for (const b of document.querySelectorAll("#arena-votes button")) b.disabled = true;
    try {
      const r = await api("/arena/vote", { id: battleId, vote: btn.dataset.vote });
      $("#arena-name-a").textContent = "— " + r.model_a;
      $("#arena-name-b").textContent = "— " + r.model_b;
      const verdict = r.vote === "tie" ? "a tie" : (r.vote === "a" ? r.model_a : r.model_b) + " wins";
      $("#arena-reveal").textContent = "Vote saved: " + verdict + ". A was " + r.model_a + ", B was " + r.model_b + ".";
      $("#arena-status").textContent = "";
    } catch (err) { $("#arena-reveal").textContent = err.message; }
  });
}

// ---------------------------------------------------------------- results
const pct = (x) => (x === null ? "–" : (100 * x).toFixed(1) + "%");
loaders.results = async () => {
  const body = $("#results-table tbody");
  try {
    const data = await api("/arena/results");
    body.innerHTML = "";
    for (const r of data.rows) {
      const tr = body.insertRow();
      const cells = [r.model_1, r.model_2, r.battles, r.wins_1, r.wins_2, r.ties, pct(r.win_rate_1), pct(r.win_rate_2), r.pending];
      cells.forEach((c, i) => { const td = tr.insertCell(); td.textContent = c; if (i > 1) td.className = "num"; });
    }
    if (!data.rows.length) body.insertRow().insertCell().textContent = "No battles yet.";
    const why = Object.entries(data.pairs.dropped).map(([k, v]) => `${k} ${v}`).join(", ");
    $("#results-pairs").textContent = `Usable preference pairs (data.source: arena:DB): ${data.pairs.usable}` +
      (why ? ` (dropped: ${why})` : "");
  } catch (err) { body.innerHTML = ""; body.insertRow().insertCell().textContent = err.message; }
};
$("#results-refresh").addEventListener("click", () => loaders.results());

loadModels();
loaders.arena();
