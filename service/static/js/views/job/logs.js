// The job's log tail (last 200 lines), kept scrolled to the end while it was at the end.

import { api } from "../../api.js";
import { stripAnsi } from "../../format.js";

/** Load the log tail into the logs <pre>. */
export async function loadLogs(ctx) {
  const pre = ctx.bind("logs");
  try {
    const { logs } = await api(`jobs/${encodeURIComponent(ctx.jobId)}/logs?tail=200`,
      { signal: ctx.signal });
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.textContent = stripAnsi(logs || "") || "(no output yet)";
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  } catch (err) {
    if (!ctx.signal.aborted) pre.textContent = `Could not load the logs: ${err.message}`;
  }
}

/** Wire the logs' Refresh button (data-act="logs"). */
export function setupLogs(ctx) {
  ctx.root.addEventListener("click", (event) => {
    if (event.target.closest("[data-act]")?.dataset.act === "logs") ctx.loadLogs();
  });
}
