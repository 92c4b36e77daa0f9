// Cancelling the job (while it runs) and deleting it (once it is over, unless a study holds
// it): each a button with an inline confirmation, shown only to a caller who may (me.js: an
// admin, or the member who owns it). A refusal (403) still shows the server's message.

import { api } from "../../api.js";
import { FINAL } from "../../config.js";
import { $ } from "../../dom.js";
import { mayChange } from "../../me.js";

/** Show or disable the cancel and delete buttons for the job's state and the caller. */
export function syncCancel(ctx) {
  const { root, v } = ctx;
  const final = FINAL.has(v.job.state);
  const allowed = mayChange(v.job.owner);
  const cancel = $('[data-act="cancel"]', root);
  const confirmBox = $(".cancel-area .confirm", root);
  cancel.disabled = final || v.cancelling;
  $(".cancel-area", root).hidden = !allowed;
  if (final) { cancel.hidden = true; confirmBox.hidden = true; } else if (confirmBox.hidden) cancel.hidden = false;
  $(".delete-area", root).hidden = !allowed || !final || Boolean(v.job.study_id);
}

/** Wire "Delete job" → "Yes, delete it" / "Keep it"; a deleted job's page goes to the list. */
function setupDelete(ctx) {
  const { root } = ctx;
  root.addEventListener("click", async (event) => {
    const act = event.target.closest("[data-act]")?.dataset.act;
    if (!act?.startsWith("delete")) return;
    const confirmBox = $(".delete-area .confirm", root);
    const button = $('[data-act="delete"]', root);
    confirmBox.hidden = act !== "delete";
    button.hidden = act === "delete";
    if (act === "delete") $('[data-act="delete-yes"]', root).focus();
    if (act !== "delete-yes") return;
    button.disabled = true;
    try {
      await api(`jobs/${encodeURIComponent(ctx.jobId)}`, { method: "DELETE" });
      location.hash = "#/";
    } catch (err) {
      ctx.showError(err, "delete the job");
      button.disabled = false;
    }
  });
}

/** Wire "Cancel job" → "Yes, cancel it" / "Keep running", and the delete button. */
export function setupCancel(ctx) {
  const { root, v } = ctx;
  setupDelete(ctx);
  root.addEventListener("click", async (event) => {
    const act = event.target.closest("[data-act]")?.dataset.act;
    if (!act?.startsWith("cancel")) return;
    const confirmBox = $(".cancel-area .confirm", root);
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
        ctx.showError(err, "cancel the job");
      } finally {
        v.cancelling = false;
        ctx.renderJob();
        ctx.loadLogs();
      }
    }
  });
}
