// lmforge chat page: streams replies from this server's /v1/chat/completions (server-sent
// events), keeps the multi-turn history in memory, and stops a reply with an AbortController
// (the server notices the closed connection and cancels the generation).
"use strict";

const $ = (id) => document.getElementById(id);
// `conversation` counts "New chat" clicks: a reply still arriving for an older conversation
// must not land in the new one's history.
const state = { model: null, contextLength: null, history: [], controller: null, conversation: 0 };
const settings = ["system", "temperature", "max-tokens", "api-key"];

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function setStatus(text) { $("status").textContent = text; }

function addMessage(role, text) {
  const box = document.createElement("div");
  box.className = "message " + role;
  box.dataset.role = role;
  const label = document.createElement("span");
  label.className = "role";
  label.textContent = role;
  const content = document.createElement("span");
  content.className = "content";
  content.textContent = text;
  box.append(label, content);
  $("messages").append(box);
  box.scrollIntoView({ block: "end" });
  return box;
}

function note(box, text) {
  const n = document.createElement("span");
  n.className = "note";
  n.textContent = text;
  box.append(n);
}

async function loadModel() {
  try {
    const response = await fetch("/v1/models", { headers: headers() });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
    state.model = body.data[0].id;
    state.contextLength = body.data[0].max_model_len || null;
    $("model-name").textContent = state.model + " · context " + body.data[0].max_model_len;
    setStatus("ready");
  } catch (err) {
    state.model = null;
    $("model-name").textContent = "?";
    setStatus("cannot list models: " + err.message);
  }
}

function busy(on) {
  $("send").disabled = on;
  $("stop").disabled = !on;
}

// Reads "data: {...}\n\n" events from a fetch body; calls onData with each parsed JSON object.
async function readEvents(response, onData) {
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
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        onData(JSON.parse(data));
      }
    }
  }
}

async function send(text) {
  if (!state.model) await loadModel();
  if (!state.model) return;
  const maxTokens = parseInt($("max-tokens").value, 10);
  if (state.contextLength && maxTokens >= state.contextLength) {
    addMessage("error", "max tokens (" + maxTokens + ") must be below the model's context of " + state.contextLength + " tokens");
    return;
  }
  addMessage("user", text);
  return ask(text);
}

// Sends the history plus this question and streams the reply into a new bubble.
async function ask(text) {
  const conversation = state.conversation;
  state.history.push({ role: "user", content: text });
  const box = addMessage("assistant", "");
  box.classList.add("streaming");
  box.dataset.chunks = "0";
  const content = box.querySelector(".content");
  const system = $("system").value.trim();
  const messages = (system ? [{ role: "system", content: system }] : []).concat(state.history);
  const controller = new AbortController();
  state.controller = controller;
  busy(true);
  setStatus("generating…");
  const started = performance.now();
  let reply = "", finish = null, tokens = null;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers(),
      signal: controller.signal,
      body: JSON.stringify({
        model: state.model, messages, stream: true, stream_options: { include_usage: true },
        temperature: parseFloat($("temperature").value), max_tokens: parseInt($("max-tokens").value, 10),
      }),
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      const error = new Error(body.error ? body.error.message : response.status + " " + response.statusText);
      error.code = body.error && body.error.code;
      throw error;
    }
    await readEvents(response, (chunk) => {
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) tokens = chunk.usage.completion_tokens;
      for (const choice of chunk.choices || []) {
        if (choice.delta && choice.delta.content) {
          reply += choice.delta.content;
          content.textContent = reply;
          box.dataset.chunks = String(Number(box.dataset.chunks) + 1);
          box.scrollIntoView({ block: "end" });
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    });
    const seconds = (performance.now() - started) / 1000;
    note(box, (tokens !== null ? tokens + " tokens, " : "") + seconds.toFixed(1) + " s" + (finish === "length" ? " (max tokens reached)" : ""));
    setStatus("ready");
  } catch (err) {
    if (conversation !== state.conversation) return;  // "New chat" was clicked meanwhile
    if (err.name === "AbortError") {
      finish = "stopped";
      note(box, "(stopped)");
      setStatus("stopped");
    } else if (err.code === "context_length_exceeded" && state.history.length > 2) {
      // The conversation outgrew the context: forget the oldest exchange and ask again, as
      // `lmforge chat` does (the system prompt is kept). Forgotten bubbles are greyed out.
      box.remove();
      const question = state.history.pop();
      state.history.splice(0, 2);
      const kept = document.querySelectorAll(".message.user:not(.dropped), .message.assistant:not(.dropped)");
      kept.forEach((el, i) => { if (i < 2) el.classList.add("dropped"); });
      setStatus("dropped the oldest exchange to fit the context");
      state.controller = null;
      return ask(question.content);
    } else {
      state.history.pop();  // the question can be sent again
      box.remove();
      addMessage("error", err.message);
      setStatus("error");
      busy(false);
      state.controller = null;
      return;
    }
  }
  if (conversation !== state.conversation) return;
  box.classList.remove("streaming");
  box.dataset.finish = finish || "stop";
  state.history.push({ role: "assistant", content: reply });
  state.controller = null;
  busy(false);
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("input").value;
  if (!text.trim() || state.controller) return;
  $("input").value = "";
  send(text);
});
$("input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {  // isComposing: Chinese IME
    event.preventDefault();
    $("composer").requestSubmit();
  }
});
$("stop").addEventListener("click", () => { if (state.controller) state.controller.abort(); });
$("new-chat").addEventListener("click", () => {
  state.conversation += 1;
  if (state.controller) state.controller.abort();
  state.controller = null;
  busy(false);
  state.history = [];
  $("messages").replaceChildren();
  setStatus("new chat");
});
$("temperature").addEventListener("input", () => { $("temperature-value").textContent = $("temperature").value; });
for (const id of settings) {
  const saved = localStorage.getItem("lmforge." + id);
  if (saved !== null) $(id).value = saved;
  $(id).addEventListener("change", () => localStorage.setItem("lmforge." + id, $(id).value));
}
$("temperature-value").textContent = $("temperature").value;
$("api-key").addEventListener("change", loadModel);
loadModel();
