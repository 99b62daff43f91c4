// pilotfish status UI: follows the page's live feed and swaps in the panels the server
// rendered. The token (if any) lives in sessionStorage and travels only in the
// Authorization header of fetch(), never in a URL (EventSource cannot send headers).
"use strict";
(() => {
  const TOKEN_KEY = "pilotfish.token";
  const SILENCE_MS = 3500; // the server sends a frame every second: this long silent is lost
  const body = document.body;
  const conn = document.getElementById("connection");
  const filter = document.getElementById("filter");
  const tokenInput = document.getElementById("token-input");
  const tokenState = document.getElementById("token-state");
  let token = sessionStorage.getItem(TOKEN_KEY) || "";
  let controller = null;
  let generation = 0;
  let lostSince = null;
  let retry = 500;
  let refilter = null;

  const timeText = (date) => date.toLocaleTimeString();

  function state(kind, text) {
    conn.className = "conn " + kind;
    conn.textContent = text;
  }

  function lost(reason) {
    if (lostSince === null) lostSince = new Date();
    state("down", `disconnected since ${timeText(lostSince)}: ${reason}; retrying`);
    document.documentElement.classList.add("disconnected");
  }

  function localTimes(root) {
    for (const el of root.querySelectorAll("time[datetime]")) {
      el.textContent = timeText(new Date(el.dateTime));
    }
  }

  function applyFilter() {
    if (!filter) return;
    const text = filter.value.trim().toLowerCase();
    for (const row of document.querySelectorAll("tr[data-search]")) {
      row.hidden = text !== "" && !row.dataset.search.includes(text);
    }
  }

  function apply(frame) {
    for (const [id, html] of Object.entries(frame.panels)) {
      const el = document.getElementById(id);
      if (el) { el.innerHTML = html; localTimes(el); }
    }
    lostSince = null;
    document.documentElement.classList.remove("disconnected");
    if (frame.stale) {
      const since = frame.stale_since ? timeText(new Date(frame.stale_since * 1000)) : "?";
      state("stale", `stale since ${since}: the backend does not answer (last view shown)`);
    } else {
      state("live", `live · ${timeText(new Date(frame.at * 1000))}`);
    }
    applyFilter();
  }

  function say(text) { tokenState.textContent = text; }

  function refused(answer) {
    token = "";
    sessionStorage.removeItem(TOKEN_KEY);
    say(`Token refused (${answer.error || "denied"}); showing what needs no token.`);
  }

  function handle(block) {
    let name = "message";
    let data = "";
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) name = line.slice(6).trim();
      else if (line.startsWith("data:")) data += line.slice(5).trim();
    }
    if (name === "frame") apply(JSON.parse(data));
    else if (name === "denied") { refused(JSON.parse(data)); follow(); }
  }

  async function follow() {
    const mine = ++generation;
    if (controller) controller.abort();
    const ctrl = new AbortController();
    controller = ctrl;
    let url = body.dataset.feed;
    if (filter && filter.value.trim()) url += "&q=" + encodeURIComponent(filter.value.trim());
    const headers = token ? { Authorization: "Bearer " + token } : {};
    let watchdog = null;
    const bark = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => ctrl.abort(), SILENCE_MS);
    };
    let reason = null;
    try {
      bark();
      const response = await fetch(url, { headers, signal: ctrl.signal, cache: "no-store" });
      if ((response.status === 401 || response.status === 403) && token) {
        refused(await response.json().catch(() => ({})));
        clearTimeout(watchdog);
        if (mine === generation) follow();
        return;
      }
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      retry = 500;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        bark();
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          handle(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
    } catch (error) {
      if (ctrl.signal.aborted) reason = "no answer";
      else if (String(error.message).startsWith("HTTP ")) reason = `refused (${error.message})`;
      else reason = "cannot reach pilotfish";
    } finally {
      clearTimeout(watchdog);
    }
    if (mine !== generation) return; // a newer follow() took over
    if (reason !== null) {
      lost(reason);
      retry = Math.min(retry * 2, 4000);
    }
    setTimeout(() => { if (mine === generation) follow(); }, reason === null ? 100 : retry);
  }

  document.getElementById("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    token = tokenInput.value.trim();
    tokenInput.value = "";
    if (token) sessionStorage.setItem(TOKEN_KEY, token); else sessionStorage.removeItem(TOKEN_KEY);
    say(token ? "Token in use (this tab only)." : "No token.");
    follow();
  });
  document.getElementById("token-forget").addEventListener("click", () => {
    token = "";
    sessionStorage.removeItem(TOKEN_KEY);
    say("Token forgotten.");
    follow();
  });
  if (filter) {
    filter.addEventListener("input", () => {
      applyFilter();
      clearTimeout(refilter);
      refilter = setTimeout(follow, 300); // the server filters too (long lists are cut)
    });
  }
  document.addEventListener("click", (e) => {
    const code = e.target.closest("code.copy");
    if (!code || !navigator.clipboard) return;
    navigator.clipboard.writeText(code.textContent).then(() => {
      code.classList.add("copied");
      setTimeout(() => code.classList.remove("copied"), 800);
    }, () => {});
  });
  if (token) say("Token in use (this tab only).");
  localTimes(document);
  applyFilter();
  if (body.dataset.feed) follow();
})();
