// The console's behaviour: relative times kept current, live parts of a
// page refreshed from the server, and the site editor checked as it is
// typed. Pages work without it; it only keeps them current.
(() => {
  "use strict";
  const csrf = () => {
    const m = document.querySelector('meta[name="csrf-token"]');
    return m ? m.content : "";
  };

  const ago = (ms) => {
    const s = Math.max(0, Math.floor((Date.now() - ms) / 1000));
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    if (s < 172800) return Math.floor(s / 3600) + " h ago";
    return Math.floor(s / 86400) + " d ago";
  };
  const tick = () => {
    for (const t of document.querySelectorAll("time[data-ms]")) {
      t.textContent = ago(Number(t.dataset.ms));
    }
  };
  setInterval(tick, 1000);

  // An element with data-live is replaced by what its URL answers, every
  // data-every milliseconds while the page is visible, until the server
  // says it is done.
  for (const el of document.querySelectorAll("[data-live]")) {
    const every = Number(el.dataset.every) || 2000;
    const poll = async () => {
      if (!document.hidden) {
        try {
          const r = await fetch(el.dataset.live, { credentials: "same-origin" });
          if (r.status === 401) {
            location.href = "/console/login";
            return;
          }
          if (r.ok) {
            el.innerHTML = await r.text();
            tick();
            if (r.headers.get("x-console-done")) return;
          }
        } catch (_) {
          // The control plane is restarting or unreachable: try again.
        }
      }
      setTimeout(poll, every);
    };
    setTimeout(poll, every);
  }

  // The site editor: the control plane checks the text a moment after
  // typing stops, and the problems appear under it.
  const editor = document.querySelector("textarea[data-check]");
  if (editor && !editor.readOnly) {
    const out = document.getElementById(editor.dataset.out);
    let timer;
    // Only the answer to the latest text is shown, whatever order the
    // answers come in.
    let asked = 0;
    const check = async () => {
      const mine = ++asked;
      try {
        const r = await fetch(editor.dataset.check, {
          method: "POST",
          credentials: "same-origin",
          headers: { "content-type": "text/plain; charset=utf-8", "x-csrf-token": csrf() },
          body: editor.value,
        });
        const text = await r.text();
        if (mine === asked && (r.status === 200 || r.status === 400)) out.innerHTML = text;
      } catch (_) {
        // Unreachable for a moment: the next keystroke asks again.
      }
    };
    editor.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(check, 300);
    });
  }
})();
