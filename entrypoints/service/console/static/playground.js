// The playground: each chosen model's answer streamed from /ui/api/chat (the session's cookie,
// never a key, goes with it), with time to first token, tokens/s and finish_reason per panel.
"use strict";
(function () {
  const form = document.getElementById("chat-form");
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const selects = Array.from(form.querySelectorAll("select[data-panel]"));
  let histories = selects.map(() => []);

  function params() {
    const out = {};
    for (const name of ["temperature", "top_p", "max_tokens", "seed"]) {
      const value = form.elements[name].value.trim();
      if (value !== "") out[name] = Number(value);
    }
    return out;
  }

  function messagesOf(k, extra) {
    const system = form.elements.system.value.trim();
    const base = system ? [{ role: "system", content: system }] : [];
    return base.concat(histories[k], extra ? [extra] : []);
  }

  function bubble(panel, role, text) {
    const p = document.createElement("div");
    p.className = "turn " + role;
    p.textContent = text;
    panel.querySelector(".transcript").appendChild(p);
    return p;
  }

  async function stream(k, model, message) {
    const panel = document.getElementById("panel-" + k);
    const stats = panel.querySelector(".stats");
    panel.querySelector(".panel-title").textContent = model;
    bubble(panel, "user", message.content);
    const answer = bubble(panel, "assistant", "");
    panel.setAttribute("aria-busy", "true");
    stats.textContent = "waiting…";
    stats.dataset.ttft = stats.dataset.tps = stats.dataset.finish = stats.dataset.model = "";
    const body = Object.assign({ model: model, messages: messagesOf(k, message) }, params());
    const start = performance.now();
    let first = null, text = "", finish = null, tokens = 0, usage = null, served = null;
    try {
      const response = await fetch("/ui/api/chat", {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify(body),
      });
      if (!response.ok) {
        let why = response.status + " " + response.statusText;
        try { why = (await response.json()).error.message; } catch (e) { /* not JSON */ }
        throw new Error(why);
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let pending = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        pending += decoder.decode(value, { stream: true });
        const lines = pending.split("\n");
        pending = lines.pop();
        for (const line of lines) {
          if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
          const chunk = JSON.parse(line.slice(6));
          if (chunk.usage) usage = chunk.usage;
          if (chunk.model) served = chunk.model;  // an alias is answered by a version: its name
          const choice = (chunk.choices || [])[0];
          if (!choice) continue;
          const piece = (choice.delta && choice.delta.content) || "";
          // The first token: the first text, or the end when the first token ends the answer.
          if (first === null && (piece || choice.finish_reason)) first = performance.now();
          if (piece) {
            tokens += 1;
            text += piece;
            answer.textContent = text;
          }
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
      const end = performance.now();
      if (!text.trim()) answer.classList.add("empty");  // nothing to read: say so
      const count = usage ? usage.completion_tokens : tokens;
      const seconds = (end - start) / 1000;  // tokens/s over the whole request, as a client sees it
      const tps = seconds > 0 ? count / seconds : 0;
      const ttft = first === null ? null : first - start;
      stats.dataset.ttft = ttft === null ? "" : ttft.toFixed(0);
      stats.dataset.tps = tps.toFixed(1);
      stats.dataset.finish = finish || "";
      stats.dataset.model = served || "";
      stats.textContent = "TTFT " + (ttft === null ? "—" : ttft.toFixed(0) + " ms") + " · " +
        tps.toFixed(1) + " tokens/s · " + count + " tokens · finish_reason: " + (finish || "—") +
        (served && served !== model ? " · answered by " + served : "");
      histories[k].push(message, { role: "assistant", content: text });
    } catch (error) {
      answer.classList.add("error");
      answer.setAttribute("role", "alert");
      answer.textContent = "Error: " + error.message;
      stats.textContent = "";
    } finally {
      panel.setAttribute("aria-busy", "false");
    }
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    const content = form.elements.message.value;
    if (!content.trim()) return;
    const message = { role: "user", content: content };
    selects.forEach(function (select, k) {
      if (select.value) stream(k, select.value, message);
    });
    form.elements.message.value = "";
  });

  form.elements.message.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  document.getElementById("new-chat").addEventListener("click", function () {
    histories = selects.map(() => []);
    document.querySelectorAll(".panel").forEach(function (panel) {
      panel.querySelector(".transcript").textContent = "";
      const stats = panel.querySelector(".stats");
      stats.textContent = "";
      stats.dataset.ttft = stats.dataset.tps = stats.dataset.finish = "";
    });
    form.elements.message.focus();
  });

  function sdkCode() {
    const pending = form.elements.message.value.trim();
    const messages = messagesOf(0, pending ? { role: "user", content: pending } : null);
    const args = params();
    const lines = ["import os", "", "from openai import OpenAI", "",
      "client = OpenAI(base_url=" + JSON.stringify(location.origin + "/v1") +
      ', api_key=os.environ["TUNESHIP_API_KEY"])',
      "answer = client.chat.completions.create(",
      "    model=" + JSON.stringify(selects[0].value) + ",",
      "    messages=" + JSON.stringify(messages, null, 4).replace(/\n/g, "\n    ") + ","];
    for (const [name, value] of Object.entries(args)) lines.push("    " + name + "=" + value + ",");
    lines.push(")", "print(answer.choices[0].message.content)");
    return lines.join("\n");
  }

  document.getElementById("copy-code").addEventListener("click", async function () {
    const code = sdkCode();
    const box = document.getElementById("code");
    const status = document.getElementById("copy-status");
    box.value = code;
    try {
      await navigator.clipboard.writeText(code);
      status.textContent = "Copied to the clipboard.";
    } catch (error) {
      box.select();
      status.textContent = "Shown below: select it and copy.";
    }
  });
})();
