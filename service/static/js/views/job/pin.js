// Pinning the job (its checkpoints, model files and log are kept past the retention,
// SYNCBN_RETENTION_DAYS) and what the retention removed: a "Pin" / "Unpin" button, shown only
// to a caller who may change the job (me.js: an admin, or the member who owns it), a "pinned"
// badge in the header, and "files removed by the retention on <date>" in the Model and Logs
// sections once they are gone. A refusal (403, or 409 once the files are removed) shows the
// server's message.

import { api } from "../../api.js";
import { $, $$, h } from "../../dom.js";
import { parseTime } from "../../format.js";
import { mayChange } from "../../me.js";

/** <time> of an API timestamp as a date and time of day (full ISO in the title). */
function whenEl(value) {
  const date = parseTime(value);
  if (!date) return null;
  return h("time", { datetime: date.toISOString(), title: date.toISOString() },
    date.toLocaleString([], { year: "numeric", month: "short", day: "numeric",
      hour: "2-digit", minute: "2-digit" }));
}

/** Show the badge, the button and the "files removed" lines for the job and the caller. */
export function syncPin(ctx) {
  const { root, v } = ctx;
  const job = v.job;
  const pinned = Boolean(job.pinned);
  ctx.bind("pinned").hidden = !pinned;

  const button = $('[data-act="pin"]', root);
  const removed = Boolean(job.files_removed_at);
  // Nothing is left to keep once the retention removed the files (pinning would be a 409).
  button.hidden = !mayChange(job.owner) || (removed && !pinned);
  button.disabled = Boolean(v.pinning);
  button.textContent = pinned ? "Unpin" : "Pin";
  button.dataset.pinned = String(pinned);
  button.setAttribute("aria-pressed", String(pinned));
  button.title = pinned ? "let the retention remove its files again once they are due"
    : "keep its checkpoints, model files and log past the retention";

  const stamp = removed ? job.files_removed_at : null;
  for (const line of $$('[data-role="files-removed"]', root)) {
    if (line._stamp === stamp) continue;
    line._stamp = stamp;
    line.replaceChildren(...(removed ? ["Files removed by the retention on ",
      whenEl(stamp) ?? String(stamp), "."] : []));
    line.hidden = !removed;
  }
  if (removed) ctx.bind("model-panel").hidden = false;
}

/** Wire the Pin / Unpin button (data-act="pin"). */
export function setupPin(ctx) {
  const { root, v } = ctx;
  root.addEventListener("click", async (event) => {
    if (event.target.closest("[data-act]")?.dataset.act !== "pin" || !v.job || v.pinning) return;
    const pin = !v.job.pinned;
    v.pinning = true;
    ctx.renderJob();
    try {
      v.job = await api(`jobs/${encodeURIComponent(ctx.jobId)}/pin`,
        { method: pin ? "POST" : "DELETE", signal: ctx.signal });
      ctx.showError(null);
    } catch (err) {
      if (ctx.signal.aborted) return;
      ctx.showError(err, pin ? "pin the job" : "unpin the job");
    } finally {
      v.pinning = false;
      if (!ctx.signal.aborted) ctx.renderJob();
    }
    $('[data-act="pin"]', root).focus();
  });
}
