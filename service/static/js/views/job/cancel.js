// Cancelling the job: the button, its inline confirmation, and the POST.

import { api } from "../../api.js";
import { FINAL } from "../../config.js";
import { $ } from "../../dom.js";

/** Show or disable the cancel button for the job's state. */
export function syncCancel(ctx) {
  const { root, v } = ctx;
  const final = FINAL.has(v.job.state);
  const cancel = $('[data-act="cancel"]', root);
  const confirmBox = $(".confirm", root);
  cancel.disabled = final || v.cancelling;
  if (final) { cancel.hidden = true; confirmBox.hidden = true; } else if (confirmBox.hidden) cancel.hidden = false;
}

/** Wire "Cancel job" → "Yes, cancel it" / "Keep running". */
export function setupCancel(ctx) {
  const { root, v } = ctx;
  root.addEventListener("click", async (event) => {
    const act = event.target.closest("[data-act]")?.dataset.act;
    if (!act?.startsWith("cancel")) return;
    const confirmBox = $(".confirm", root);
    const cancelButton = $('[data-act="cancel"]', root);
    if (act === "cancel") {
      cancelButton.hidden = true;
      confirmBox.hidden = false;
      $('[data-act="cancel-yes"]', root).focus();
    } else if (act === "cancel-no") {
      confirmBox.hidden = true;
      cancelButton.hidden = false;
      cancelButton.focus();
    } else if (act === "cancel-yes") {
      confirmBox.hidden = true;
      cancelButton.hidden = false;
      cancelButton.disabled = true;
      v.cancelling = true;
      try {
        v.job = await api(`jobs/${encodeURIComponent(ctx.jobId)}/cancel`, { method: "POST" });
        ctx.showError(null);
      } catch (err) {
        ctx.showError(err);
      } finally {
        v.cancelling = false;
        ctx.renderJob();
        ctx.loadLogs();
      }
    }
  });
}
