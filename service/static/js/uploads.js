// Uploads: the dataset upload form (.npz, or an image-folder .zip with an optional image size),
// the code bundle upload form (.zip or .tar.gz; its modules suggest "<module>:build_model"), and
// the labels of uploaded datasets and bundles in the job form's selects.

import { api, ApiError } from "./api.js";
import { $, h } from "./dom.js";

/** An upload's failure as text: pydantic's messages joined (naming fields other than the file). */
function uploadError(err) {
  if (err instanceof ApiError && Array.isArray(err.detail)) {
    return err.detail.map((d) => {
      const loc = Array.isArray(d.loc) ? d.loc : [];
      const name = loc.length >= 2 && loc[0] === "body" ? String(loc[loc.length - 1]) : null;
      return name && name !== "file" ? `${name}: ${d.msg}` : d.msg || JSON.stringify(d);
    }).join("; ");
  }
  return err.message;
}

/** "cat, dog" or "a, b, c, d, … (12)": class names, briefly. */
function briefNames(names, max = 4) {
  if (!Array.isArray(names) || !names.length) return "";
  return names.length <= max ? names.join(", ") : `${names.slice(0, max).join(", ")}, … (${names.length})`;
}

/** An uploaded dataset's option text: name, id, size, shape, task and classes. */
export function datasetLabel(d) {
  const shape = Array.isArray(d.input_shape) ? d.input_shape.join("×") : "";
  const classes = `${d.num_classes} classes${d.class_names?.length ? `: ${briefNames(d.class_names)}` : ""}`;
  const task = d.task === "segmentation" ? "segmentation, " : "";
  return `${d.name || d.id} (${d.id}) — ${d.n_train} train, ${shape}, ${task}${classes}`;
}

/** A code bundle's option text. */
export function bundleLabel(b) {
  const modules = b.modules?.length ? b.modules.join(", ") : "no modules";
  return `${b.name || b.id} (${b.id}) — ${modules}`;
}

/** The builder suggested for a bundle's module. */
export const builderOf = (module) => `${module}:build_model`;

/**
 * Wire the upload forms under `root` (the jobs page). `onDataset(dataset)` runs (awaited) after a
 * dataset upload; `onBundle(bundle)` after a code upload, and returns the model field's value
 * (shown in the status when set).
 */
export function setupUploads(root, { onDataset, onBundle }) {
  const upload = $("#upload-form", root);
  upload.addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("#upload-file", root);
    const uploadStatus = $("#upload-status", root);
    if (!input.files.length) { uploadStatus.textContent = "Choose an .npz or .zip file first."; return; }
    const data = new FormData();
    data.append("file", input.files[0]);
    const size = $("#upload-size", root).value.trim();
    if (size) data.append("image_size", size);
    uploadStatus.textContent = "Uploading…";
    let dataset;
    try {
      dataset = await api("datasets", { method: "POST", form: data });
    } catch (err) {
      uploadStatus.textContent = `Upload failed: ${uploadError(err)}`;
      return;
    }
    // The status says "Uploaded" only once the job form selects the new dataset.
    let note = "";
    try { await onDataset(dataset); } catch (err) { note = ` (the dataset list did not refresh: ${err.message})`; }
    uploadStatus.textContent = `Uploaded as ${dataset.id}: ${datasetLabel(dataset).split(" — ")[1]}.${note}`;
  });

  const codeUpload = $("#code-upload-form", root);
  codeUpload.addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("#code-file", root);
    const codeStatus = $("#code-upload-status", root);
    codeStatus.classList.remove("error");
    if (!input.files.length) { codeStatus.textContent = "Choose a .zip or .tar.gz file first."; return; }
    const data = new FormData();
    data.append("file", input.files[0]);
    codeStatus.textContent = "Uploading…";
    try {
      const bundle = await api("code", { method: "POST", form: data });
      const model = onBundle(bundle);
      const modules = bundle.modules?.length ? bundle.modules : [];
      codeStatus.replaceChildren(`Uploaded as `, h("code", {}, bundle.id),
        modules.length ? ` (${bundle.files} file${bundle.files === 1 ? "" : "s"}): modules ` : ": no Python modules found.",
        ...modules.flatMap((m, i) => [i ? ", " : "", h("code", {}, m)]),
        modules.length ? `. Model: ${model || builderOf(modules[0])}.` : "",
        bundle.requirements?.length ? ` Requirements: ${bundle.requirements.join(", ")}.` : "");
      codeStatus.dataset.codeId = bundle.id;
    } catch (err) {
      codeStatus.classList.add("error");
      codeStatus.textContent = `Upload failed: ${uploadError(err)}`;
    }
  });
}
