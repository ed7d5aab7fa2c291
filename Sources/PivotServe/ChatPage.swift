/// The bilingual chat page served at `/`: one static file, no CDN, compiled into the binary so a copied `pivot` still serves it.
enum ChatPage {
  static let html = #"""
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Pivot · 对话</title>
<style>
  :root { --line: #d9dce1; --muted: #6b7280; --accent: #2563eb; --user: #e8f0fe; --bot: #f4f5f7; --bad: #b91c1c; }
  * { box-sizing: border-box; }
  html, body { height: 100%; margin: 0; }
  body {
    display: flex; flex-direction: column; color: #111827; background: #fff; font-size: 15px; line-height: 1.55;
    font-family: system-ui, -apple-system, "Segoe UI", "PingFang SC", "Hiragino Sans GB", "Microsoft YaHei",
      "Noto Sans CJK SC", "Noto Sans SC", "WenQuanYi Zen Hei", sans-serif;
  }
  header, footer { padding: 10px 16px; border-color: var(--line); border-style: solid; border-width: 0; }
  header { display: flex; align-items: center; gap: 12px; flex-wrap: wrap; border-bottom-width: 1px; }
  header h1 { font-size: 17px; margin: 0; }
  #model { color: var(--muted); font-family: ui-monospace, monospace; font-size: 13px; flex: 1; }
  #model.error, .error-text { color: var(--bad); }
  label { font-size: 13px; color: var(--muted); display: inline-flex; align-items: center; gap: 6px; }
  input, select, textarea, button { font: inherit; font-size: 14px; }
  input[type=password], input[type=number], select { padding: 3px 6px; border: 1px solid var(--line); border-radius: 6px; }
  #max-tokens { width: 5.5em; }
  #image-input { max-width: 15em; }
  #reset { margin-left: auto; }
  #messages { flex: 1; overflow-y: auto; padding: 16px; display: flex; flex-direction: column; gap: 10px; }
  .msg { max-width: min(720px, 85%); padding: 8px 12px; border-radius: 12px; white-space: pre-wrap; overflow-wrap: anywhere; }
  .msg::before { display: block; font-size: 12px; color: var(--muted); }
  .msg.user { align-self: flex-end; background: var(--user); }
  .msg.user::before { content: "You · 你"; }
  .msg.assistant { align-self: flex-start; background: var(--bot); }
  .msg.assistant::before { content: "Pivot · 模型"; }
  .msg.assistant:not([data-done]) .text:empty::after { content: "…"; color: var(--muted); }
  .msg.error { border: 1px solid var(--bad); }
  .msg img { display: block; width: 120px; height: 120px; object-fit: contain; border-radius: 8px; margin: 4px 0; }
  .controls { display: flex; align-items: center; gap: 14px; flex-wrap: wrap; margin-bottom: 8px; }
  #image-preview { height: 48px; max-width: 96px; object-fit: cover; border-radius: 6px; border: 1px solid var(--line); }
  footer { border-top-width: 1px; }
  .composer { display: flex; gap: 8px; }
  #prompt { flex: 1; resize: vertical; min-height: 44px; padding: 8px 10px; border: 1px solid var(--line); border-radius: 8px; }
  button { padding: 6px 14px; border-radius: 8px; border: 1px solid var(--line); background: #fff; cursor: pointer; }
  #send { background: var(--accent); border-color: var(--accent); color: #fff; }
  button:disabled { opacity: 0.5; cursor: default; }
</style>
</head>
<body>
<header>
  <h1>Pivot</h1>
  <span id="model">Loading model… · 正在加载模型…</span>
  <label>API key · 密钥 <input id="api-key" type="password" autocomplete="off" placeholder="optional · 可选"></label>
</header>
<main id="messages"></main>
<footer>
  <div class="controls">
    <label>Image · 图片 <input type="file" id="image-input" accept="image/jpeg,image/png,image/webp"></label>
    <img id="image-preview" alt="" hidden>
    <label>Temperature · 温度
      <select id="temperature">
        <option value="0" selected>0 (greedy · 贪心)</option>
        <option value="0.7">0.7</option>
        <option value="1.0">1.0</option>
      </select>
    </label>
    <label>Max tokens · 最大长度 <input id="max-tokens" type="number" min="1" value="256"></label>
    <button id="reset" type="button">Start over · 重新开始</button>
  </div>
  <div class="composer">
    <textarea id="prompt" rows="2" placeholder="Ask something (Enter sends, Shift+Enter new line) · 输入问题（回车发送，Shift+回车换行）"></textarea>
    <button id="send" type="button">Send · 发送</button>
  </div>
</footer>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const els = {
  model: $("model"), key: $("api-key"), image: $("image-input"), preview: $("image-preview"),
  prompt: $("prompt"), send: $("send"), reset: $("reset"), messages: $("messages"),
  temperature: $("temperature"), maxTokens: $("max-tokens"),
};
// history: the OpenAI messages sent with every turn; pendingImage: a data: URI for the next user message.
const state = { model: null, history: [], pendingImage: null, busy: false };

els.key.value = localStorage.getItem("pivot-api-key") || "";
els.key.addEventListener("input", () => localStorage.setItem("pivot-api-key", els.key.value.trim()));
// A server started with a key refuses /v1/models without one: try again once a key is entered.
els.key.addEventListener("change", () => { if (!state.model) loadModel(); });

function headers(extra) {
  const result = Object.assign({}, extra);
  const key = els.key.value.trim();
  if (key) result["Authorization"] = "Bearer " + key;
  return result;
}

// Pivot's errors are OpenAI-shaped ({"error": {"message", "type", "code"}}); fall back to the status and body.
async function errorMessage(response) {
  const body = await response.text();
  try { const e = JSON.parse(body).error; if (e && e.message) return e.message; } catch (_) { /* not JSON */ }
  return "HTTP " + response.status + (body ? ": " + body.slice(0, 300) : "");
}

async function loadModel() {
  try {
    const response = await fetch("/v1/models", { headers: headers() });
    if (!response.ok) throw new Error(await errorMessage(response));
    const list = await response.json();
    if (!list.data || !list.data.length) throw new Error("the server lists no model · 服务器没有模型");
    state.model = list.data[0].id;
    els.model.textContent = state.model;
    els.model.classList.remove("error");
    els.model.dataset.ready = "true";
  } catch (e) {
    els.model.textContent = "Error · 错误: " + e.message;
    els.model.classList.add("error");
  }
}

function addMessage(role, text, image) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  if (image) { const img = document.createElement("img"); img.src = image; img.alt = ""; div.appendChild(img); }
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  div.appendChild(body);
  els.messages.appendChild(div);
  els.messages.scrollTop = els.messages.scrollHeight;
  return div;
}

function setPendingImage(uri) {
  state.pendingImage = uri;
  els.preview.hidden = !uri;
  if (uri) els.preview.src = uri; else els.preview.removeAttribute("src");
}

function startOver() {
  state.history = [];
  els.messages.textContent = "";
}

function setBusy(busy) {
  state.busy = busy;
  els.send.disabled = busy;
  els.reset.disabled = busy;
  els.image.disabled = busy;
}

els.image.addEventListener("change", () => {
  const file = els.image.files[0];
  if (!file) return;
  const reader = new FileReader();
  // The server takes one image per conversation, so a new image begins a new one.
  reader.onload = () => { startOver(); setPendingImage(reader.result); };
  reader.onerror = () => alert("Could not read the image · 无法读取图片");
  reader.readAsDataURL(file);
});

els.reset.addEventListener("click", () => { startOver(); setPendingImage(null); els.image.value = ""; els.prompt.focus(); });

// Reads `data: …` server-sent events as they arrive; calls onText with each delta; resolves with the whole answer.
async function readEvents(response, onText) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", answer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    const lines = buffer.split("\n");
    buffer = lines.pop(); // a line cut between two reads waits for the rest
    for (const raw of lines) {
      const line = raw.replace(/\r$/, "");
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") { reader.cancel().catch(() => {}); return answer; }
      const event = JSON.parse(data);
      if (event.error) throw new Error(event.error.message || "stream error · 流错误");
      const choice = event.choices && event.choices[0];
      const piece = choice && choice.delta && choice.delta.content;
      if (piece) { answer += piece; onText(piece); }
    }
  }
  throw new Error("the stream ended before [DONE] · 连接提前结束");
}

async function send() {
  const text = els.prompt.value.trim();
  if (state.busy || !text) return;
  if (!state.model) { await loadModel(); if (!state.model) return; }
  const image = state.pendingImage;
  // The image part first: Pivot trains with the image ahead of the question.
  const content = image ? [{ type: "image_url", image_url: { url: image } }, { type: "text", text: text }] : text;
  addMessage("user", text, image);
  state.history.push({ role: "user", content: content });
  setPendingImage(null);
  els.image.value = "";
  els.prompt.value = "";
  const bubble = addMessage("assistant", "");
  const out = bubble.querySelector(".text");
  setBusy(true);
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify({
        model: state.model, messages: state.history, stream: true,
        temperature: Number(els.temperature.value), max_tokens: Number(els.maxTokens.value) || 256,
      }),
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    const answer = await readEvents(response, (piece) => {
      out.textContent += piece;
      els.messages.scrollTop = els.messages.scrollHeight;
    });
    state.history.push({ role: "assistant", content: answer });
    bubble.dataset.done = "true";
  } catch (e) {
    const note = document.createElement("div");
    note.className = "error-text";
    note.textContent = "Error · 错误: " + e.message;
    bubble.appendChild(note);
    bubble.classList.add("error");
    bubble.dataset.done = "error";
    // Keep the history a valid alternation, and give the image back so a retry still carries it.
    state.history.pop();
    if (image && !state.pendingImage) setPendingImage(image);
  } finally {
    setBusy(false);
    els.prompt.focus();
  }
}

els.send.addEventListener("click", send);
els.prompt.addEventListener("keydown", (e) => {
  // Enter while an input method is composing (pinyin) picks a candidate; it must not send.
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) { e.preventDefault(); send(); }
});
loadModel();
</script>
</body>
</html>
"""#
}
