// The job's log tail (last 200 lines), kept scrolled to the end while it was at the end; the
// server's reason in its place when there is none (the retention removed it).

import { api } from "../../api.js";
import { stripAnsi } from "../../format.js";

/** Load the log tail into the logs <pre>. */
export async function loadLogs(ctx) {
  const pre = ctx.bind("logs");
  try {
    const { logs, reason } = await api(`jobs/${encodeURIComponent(ctx.jobId)}/logs?tail=200`,
      { signal: ctx.signal });
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    const text = stripAnsi(logs || "");
    // An empty log with a reason (the retention removed it): the reason in its place.
    pre.classList.toggle("removed", !text && Boolean(reason));
    pre.textContent = text || reason || "(no output yet)";
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  } catch (err) {
    if (ctx.signal.aborted) return;
    pre.classList.remove("removed");
    pre.textContent = `Could not load the logs: ${err.message}`;
  }
}

/** Wire the logs' Refresh button (data-act="logs"). */
export function setupLogs(ctx) {
  ctx.root.addEventListener("click", (event) => {
    if (event.target.closest("[data-act]")?.dataset.act === "logs") ctx.loadLogs();
  });
}
