// Sagaway web UI: live timelines and lists over Server-Sent Events, retry/cancel without a
// reload. No framework, no build step; the pages work without it (just not live).
"use strict";
(function () {
  const streams = new Map(); // element -> EventSource

  function stopStream(element) {
    const source = streams.get(element);
    if (source) { source.close(); streams.delete(element); }
  }

  // The saga page: the server re-renders the timeline after each change and sends it whole.
  function followSaga(element, url) {
    stopStream(element);
    const source = new EventSource(url);
    streams.set(element, source);
    source.addEventListener("timeline", (event) => {
      element.innerHTML = event.data;
      element.dispatchEvent(new CustomEvent("sagaway:updated", { bubbles: true }));
    });
    source.addEventListener("end", () => stopStream(element));
  }

  // Lists (sagas, orders, stock...): elements with data-live="URL" and an id. The stream at URL
  // sends each element's new HTML in an event named after its id, only when it changed; the
  // server renders it once for every open page, so the page never asks for it.
  function followFragments(url, elements) {
    const source = new EventSource(url);
    elements.forEach((element) => {
      streams.set(element, source);
      source.addEventListener(element.id, (event) => {
        element.innerHTML = event.data;
        element.dispatchEvent(new CustomEvent("sagaway:updated", { bubbles: true }));
      });
    });
    return source;
  }

  async function refreshFragment(element) {
    const response = await fetch(element.dataset.fragment, { headers: { Accept: "text/html" } });
    if (response.ok) element.innerHTML = await response.text();
  }

  // The inbox's deadlines count down (the server rendered them once; lists re-render them).
  function span(seconds) {
    const d = Math.floor(seconds / 86400), h = Math.floor(seconds % 86400 / 3600);
    const m = Math.floor(seconds % 3600 / 60), s = seconds % 60;
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + String(m).padStart(2, "0") + "m";
    return m ? m + "m " + String(s).padStart(2, "0") + "s" : s + "s";
  }

  function tick() {
    const now = Date.now() / 1000;
    document.querySelectorAll("[data-deadline]").forEach((element) => {
      const until = parseFloat(element.dataset.deadline);
      if (Number.isNaN(until)) return;
      const left = Math.trunc(until - now);
      element.textContent = left < 0 ? span(-left) + " overdue" : span(left);
      element.classList.toggle("overdue", left < 0);
    });
  }

  function say(text, isError) {
    const box = document.querySelector("[data-testid=saga-message]");
    if (!box) return;
    box.replaceChildren();
    const p = document.createElement("p");
    p.className = isError ? "error" : "notice";
    p.textContent = text;
    box.append(p);
  }

  // Retry / cancel: post with fetch, say what happened, and follow the saga again (a retried
  // saga is active again, so its timeline moves).
  document.addEventListener("submit", async (event) => {
    const form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-action")) return;
    event.preventDefault();
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
    const button = form.querySelector("button");
    if (button) button.disabled = true;
    try {
      const response = await fetch(form.action, {
        method: "POST",
        headers: { Accept: "application/json", "Content-Type": "application/json" },
        body: "{}",
      });
      let detail = (response.ok && form.dataset.done) || response.statusText;
      try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
      say(detail, !response.ok);
      const timeline = document.getElementById("timeline");
      const url = timeline && (timeline.dataset.liveSaga || timeline.dataset.stream);
      if (timeline && url) followSaga(timeline, url);
    } catch (error) {
      say("The request failed: " + error, true);
    } finally {
      if (button && button.isConnected) button.disabled = false;
    }
  });

  function start() {
    const timeline = document.getElementById("timeline");
    if (timeline) {
      if (!timeline.dataset.liveSaga) {
        // A finished saga: no stream now, but a retry restarts one at this address.
        const match = location.pathname.match(/^(.*\/sagas\/[^/]+)$/);
        if (match) timeline.dataset.stream = match[1] + "/events";
      } else {
        followSaga(timeline, timeline.dataset.liveSaga);
      }
    }
    const byStream = new Map();
    document.querySelectorAll("[data-live][id]").forEach((element) => {
      const url = element.dataset.live;
      if (!byStream.has(url)) byStream.set(url, []);
      byStream.get(url).push(element);
    });
    byStream.forEach((elements, url) => followFragments(url, elements));
    if (document.querySelector("[data-deadline]") || document.getElementById("inbox-rows")) {
      tick();
      setInterval(tick, 1000);
    }
  }

  window.Sagaway = { followSaga, followFragments, refreshFragment, say };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
