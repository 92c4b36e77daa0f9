// The job's trained model: a download button per kept checkpoint (fetched with the token),
// that epoch's test metric, and whose BatchNorm statistics the file holds.

import { ApiError, api, download } from "../../api.js";
import { h } from "../../dom.js";
import { bytes, isNum, pct } from "../../format.js";

const jobPath = (ctx, rest) => `jobs/${encodeURIComponent(ctx.jobId)}${rest}`;

/** "test accuracy 96.30 %", or mIoU and pixel accuracy for segmentation. */
function metricText(m) {
  if (isNum(m?.test_miou)) return `test mIoU ${pct(m.test_miou, 2)}, pixel accuracy ${pct(m.test_accuracy, 2)}`;
  return isNum(m?.test_accuracy) ? `test accuracy ${pct(m.test_accuracy, 2)}` : "";
}

/** Save `model`'s file; a failure (say, its checkpoint was just dropped) is shown. */
async function save(ctx, model, button) {
  const error = ctx.bind("model-error");
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    await download(jobPath(ctx, `/model?epoch=${model.epoch}`),
      `${ctx.jobId}-epoch${model.epoch}.safetensors`, { signal: ctx.signal });
    error.hidden = true;
  } catch (err) {
    if (ctx.signal.aborted) return;
    error.textContent = `Download failed: ${err.message}`;
    error.hidden = false;
    if (err instanceof ApiError && err.status === 404) loadModels(ctx);
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
}

/**
 * Draw the Model panel (hidden while the job has no model file, unless the server says why it
 * has none: the retention removed them; that reason then stands in place of the list).
 */
function renderModels(ctx, { models, recipe, reason }) {
  const why = ctx.bind("models-reason");
  why.textContent = !models.length && reason ? reason : "";
  why.hidden = !why.textContent;
  ctx.bind("model-panel").hidden = !models.length && !reason && !ctx.v.job?.files_removed_at;
  if (!models.length) {
    ctx.bind("models").replaceChildren();
    ctx.bind("model-recipe").textContent = "";
    ctx.bind("model-bn").textContent = "";
    return;
  }
  const newest = models[models.length - 1];
  ctx.bind("model-recipe").textContent = recipe ? `${recipe.model}, input `
    + `[${recipe.input_shape.join(", ")}], ${recipe.num_classes} classes` : "";
  ctx.bind("models").replaceChildren(...models.map((m) => {
    const button = h("button", { type: "button", class: m === newest ? null : "quiet",
      "data-testid": "model-download", "data-epoch": m.epoch },
    `Download epoch ${m.epoch} (.safetensors, ${bytes(m.size_bytes)})`);
    button.addEventListener("click", () => save(ctx, m, button));
    return h("li", { "data-epoch": m.epoch }, button, " ",
      h("span", { class: "muted", "data-testid": "model-metric" }, metricText(m.metrics)));
  }));
  ctx.bind("model-bn").textContent = `BatchNorm statistics: ${newest.bn_statistics}.`;
}

/** Reload the job's model files and redraw the panel (errors leave it as it was). */
export async function loadModels(ctx) {
  try {
    renderModels(ctx, await api(jobPath(ctx, "/models"), { signal: ctx.signal }));
  } catch (err) {
    if (!ctx.signal.aborted) console.warn("model files:", err.message);
  }
}

/** loadModels() soon, once for a burst of epoch reports. */
export function scheduleModels(ctx) {
  clearTimeout(ctx.v.modelsRefresh);
  ctx.v.modelsRefresh = setTimeout(() => loadModels(ctx), 500);
}
