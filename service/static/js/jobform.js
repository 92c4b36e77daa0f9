// The job submit form, built from JobSpec's schema in /openapi.json: fields, client-side checks,
// errors next to their fields, the dataset and code selects (with uploads.js's upload forms
// feeding them), the model field's builder suggestions. "Run as a study" posts the same fields
// (minus norm and seed) to /v1/studies.

import { api, ApiError, openApi } from "./api.js";
import { readArms } from "./arms.js";
import { $, $$, h, setHidden } from "./dom.js";
import { jobFields } from "./schema.js";
import { AuthCancelled } from "./token.js";
import { builderOf, bundleLabel, datasetLabel, setupUploads } from "./uploads.js";

/** Number as an attribute value (null when absent). */
const num = (x) => (typeof x === "number" ? String(x) : null);

/** The DOM of one field: <div class="field" data-field=name> label, control, hint, error. */
function fieldEl(f) {
  const id = `f-${f.name}`;
  const described = [f.hint ? `h-${f.name}` : null, `e-${f.name}`].filter(Boolean).join(" ");
  // The schema's description as a tooltip where the visible hint says something else.
  const title = f.description && f.description !== f.hint ? f.description : null;
  const common = { id, name: f.name, "aria-describedby": described, title,
    "aria-required": f.required ? "true" : null };
  let control;
  let extra = null;
  if (f.kind === "select" || f.kind === "dataset" || f.kind === "code") {
    control = h("select", common, f.options.map(([value, text, raw]) =>
      h("option", { value, selected: raw === f.value }, text)));
  } else if (f.kind === "bool") {
    control = h("input", { ...common, type: "checkbox", checked: f.value === true });
  } else if (f.kind === "int" || f.kind === "float") {
    control = h("input", { ...common, type: "number", value: num(f.value),
      step: f.kind === "int" ? 1 : "any", min: num(f.min), max: num(f.max),
      "data-exclusive-min": f.exclusiveMin || null, "data-exclusive-max": f.exclusiveMax || null,
      inputmode: f.kind === "int" ? "numeric" : "decimal", placeholder: f.placeholder });
  } else if (f.kind === "model") {  // free text with suggestions (built-ins, a bundle's builders)
    control = h("input", { ...common, type: "text", value: f.value ?? null, list: `l-${f.name}`,
      maxlength: num(f.maxLength), placeholder: f.placeholder ?? "auto", spellcheck: "false",
      autocomplete: "off" });
    extra = h("datalist", { id: `l-${f.name}`, "data-testid": `options-${f.name}` },
      f.options.map(([value, text]) => h("option", { value, "data-builtin": true }, text)));
  } else if (f.kind === "text") {
    control = h("input", { ...common, type: "text", value: f.value ?? null,
      minlength: num(f.minLength), maxlength: num(f.maxLength), placeholder: f.placeholder,
      spellcheck: "false", autocomplete: "off" });
  } else {  // anything the form has no widget for: JSON text
    control = h("textarea", { ...common, rows: 2, spellcheck: "false", "data-json": true,
      placeholder: f.placeholder }, f.value === undefined ? "" : JSON.stringify(f.value));
  }
  return h("div", { class: `field${f.kind === "bool" ? " check" : ""}`, "data-field": f.name,
    "data-kind": f.kind },
  h("label", { for: id }, f.label),
  control,
  extra,
  f.hint ? h("small", { class: "hint", id: `h-${f.name}` }, f.hint) : null,
  h("p", { class: "field-error", id: `e-${f.name}`, "data-testid": `error-${f.name}` }));
}

/** Read the form into a JobSpec; client-side only checks that numbers (and JSON) parse. */
function readSpec(form, fields) {
  const spec = {};
  const problems = {};
  for (const f of fields) {
    const el = form.elements[f.name];
    if (f.kind === "bool") { spec[f.name] = el.checked; continue; }
    if (f.kind === "select") {
      const option = f.options.find(([value]) => value === el.value);
      spec[f.name] = option ? option[2] : el.value;
      continue;
    }
    if (f.kind === "dataset") { spec[f.name] = el.value; continue; }
    if (f.kind === "code") { spec[f.name] = el.value || null; continue; }
    if (el.validity.badInput) { problems[f.name] = "Enter a number."; continue; }
    const text = f.kind === "text" ? el.value : el.value.trim();
    if (text.trim() === "") {
      if (f.nullable) spec[f.name] = null;
      continue;  // the server's default (or its "field required")
    }
    if (f.kind === "text" || f.kind === "model") spec[f.name] = text;
    else if (f.kind === "json") {
      try { spec[f.name] = JSON.parse(text); } catch { problems[f.name] = "Enter JSON."; }
    } else spec[f.name] = Number(text);
  }
  return { spec, problems };
}

function clearErrors(form) {
  for (const el of $$(".field-error", form)) el.textContent = "";
  for (const el of $$("[aria-invalid]", form)) el.removeAttribute("aria-invalid");
  setHidden($("#form-error", form), true);
}

/** Put every error next to its field (the last element of `loc`); the rest above the button. */
function showErrors(form, names, errors, general) {
  const byField = {};
  const other = general ? [general] : [];
  for (const { field, msg } of errors) {
    if (field && names.has(field)) (byField[field] ||= []).push(msg);
    else other.push(field ? `${field}: ${msg}` : msg);
  }
  let first = null;
  for (const [name, msgs] of Object.entries(byField)) {
    $(`#e-${name}`, form).textContent = msgs.join("; ");
    const control = form.elements[name];
    control.setAttribute("aria-invalid", "true");
    first ||= control;
    if (control.closest("details")) control.closest("details").open = true;
  }
  const box = $("#form-error", form);
  const count = Object.keys(byField).length;
  const summary = count ? [`${count === 1 ? "One field needs" : `${count} fields need`} attention.`] : [];
  box.textContent = [...summary, ...other].join(" ");
  setHidden(box, !box.textContent);
  first?.focus();
}

function errorsFromDetail(detail) {
  if (!Array.isArray(detail)) return [];
  return detail.map((d) => {
    const loc = Array.isArray(d.loc) ? d.loc : [];
    const msg = d.msg || JSON.stringify(d);
    if (loc[0] === "body" && loc[1] === "arms") {  // arms.2.overrides.sync_group_size: the arms field
      return { field: "arms", msg: loc.length > 2 ? `${loc.slice(1).join(".")}: ${msg}` : msg };
    }
    const field = loc.length >= 2 && loc[0] === "body" ? String(loc[loc.length - 1]) : null;
    return { field, msg };
  });
}

/**
 * Wire the submit form under `root` (the jobs page); `onSubmitted(job)` runs after a submit.
 * Also wires the upload forms (uploads.js): an upload joins its select and is chosen there.
 * Returns {load()}: builds the fields from the schema (once; retried after a failure) and
 * fills the dataset list.
 */
export function setupJobForm(root, { onSubmitted }) {
  const form = $("#job-form", root);
  const button = $("#submit-job", root);
  const status = $("#submit-status", root);
  let fields = null;
  let names = new Set();
  let loading = null;

  async function build() {
    button.disabled = true;
    status.textContent = "Loading the form…";
    try {
      const doc = await openApi();
      fields = jobFields(doc);
      names = new Set(fields.map((f) => f.name));
      $("#job-fields", root).replaceChildren(...fields.filter((f) => !f.advanced).map(fieldEl));
      $("#job-fields-advanced", root).replaceChildren(...fields.filter((f) => f.advanced).map(fieldEl));
      clearErrors(form);
      status.textContent = "";
      button.disabled = false;
      $("#f-code", root)?.addEventListener("change", () => syncModel());
      await Promise.all([loadDatasets(), loadBundles()]);
    } catch (err) {
      status.textContent = "";
      showErrors(form, names, [], `Could not load the job form: ${err.message}`);
      throw err;
    }
  }

  /** Add the uploaded datasets to the dataset select (the built-in ones are always there). */
  async function loadDatasets() {
    const select = form.elements.dataset;
    if (!(select instanceof HTMLSelectElement)) return;
    try {
      const { datasets } = await api("datasets");
      const have = new Set([...select.options].map((o) => o.value));
      for (const d of datasets) {
        if (have.has(d.id)) continue;
        select.append(h("option", { value: d.id, "data-task": d.task || null }, datasetLabel(d)));
      }
    } catch (err) {
      if (!(err instanceof AuthCancelled)) console.warn("datasets:", err);
    }
  }

  const bundles = new Map();  // id -> code bundle (GET /v1/code, uploads)

  /** Add a bundle to the code select (once). */
  function addBundle(b) {
    bundles.set(b.id, b);
    const select = form.elements.code;
    if (!(select instanceof HTMLSelectElement)) return;
    if ([...select.options].some((o) => o.value === b.id)) return;
    select.append(h("option", { value: b.id }, bundleLabel(b)));
  }

  /** Add the uploaded code bundles to the code select (oldest last, like the API lists them). */
  async function loadBundles() {
    if (!form.elements.code) return;
    try {
      const { bundles: list } = await api("code");
      for (const b of list) addBundle(b);
    } catch (err) {
      if (!(err instanceof AuthCancelled)) console.warn("code bundles:", err);
    }
  }

  /**
   * The model field follows the code select: its suggestions get "<module>:build_model" for
   * each module of the chosen bundle, and a built-in model name becomes the first builder
   * (a builder without a bundle goes back to "auto").
   */
  function syncModel() {
    const model = form.elements.model;
    const list = $("#l-model", root);
    if (!(model instanceof HTMLInputElement) || !list) return;
    const bundle = bundles.get(form.elements.code?.value || "");
    for (const o of $$("option:not([data-builtin])", list)) o.remove();
    const builders = (bundle?.modules || []).map(builderOf);
    list.append(...builders.map((value) => h("option", { value, "data-builder": true },
      `in ${bundle.name || bundle.id}`)));
    const builtins = new Set($$("option[data-builtin]", list).map((o) => o.value));
    const current = model.value.trim();
    if (bundle && builders.length && (current === "" || builtins.has(current))) model.value = builders[0];
    else if (!bundle && current && !builtins.has(current)) model.value = "auto";
    const hint = $("#h-model", root);
    if (hint) {
      hint.textContent = bundle
        ? `Your builder as module:function, e.g. ${builders[0] || "mynet:build_model"}`
          + ` (modules: ${bundle.modules?.join(", ") || "none"}).`
        : fields.find((f) => f.name === "model")?.hint || "";
    }
  }

  /**
   * Read the form, `post(spec)` it and `done(answer)`; a problem found here or a 422 goes next
   * to its field. `extra` = {field: message} found by the caller; `fieldNames`: the fields.
   */
  async function send(post, done, extra = {}, fieldNames = names) {
    if (!fields) return;
    clearErrors(form);
    status.textContent = "";
    const { spec, problems } = readSpec(form, fields);
    Object.assign(problems, extra);
    if (Object.keys(problems).length) {
      showErrors(form, fieldNames, Object.entries(problems).map(([field, msg]) => ({ field, msg })));
      return;
    }
    button.disabled = studyButton.disabled = true;
    status.textContent = "Submitting…";
    try {
      await done(await post(spec));
    } catch (err) {
      status.textContent = "";
      if (err instanceof ApiError && Array.isArray(err.detail)) {
        showErrors(form, fieldNames, errorsFromDetail(err.detail));
      } else {
        showErrors(form, fieldNames, [], `Not submitted: ${err.message}`);
      }
    } finally {
      button.disabled = studyButton.disabled = false;
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    send((spec) => api("jobs", { method: "POST", json: spec }), async (job) => {
      status.replaceChildren("Submitted ",
        h("a", { href: `#/jobs/${encodeURIComponent(job.id)}`, "data-testid": "submitted-link",
          "data-job-id": job.id }, h("code", {}, job.id)),
        ` (${job.state}${job.reason ? `: ${job.reason}` : ""}).`);
      await onSubmitted(job);
    });
  });

  // "Run as a study": the form minus norm and seed as the base, in the chosen arms, once per
  // seed of "Study seeds".
  const studyButton = $("#submit-study", root);
  studyButton.addEventListener("click", () => {
    const text = form.elements.seeds.value.trim();
    const seeds = text ? text.split(/[\s,]+/).map(Number) : [];
    const bad = seeds.some((x) => !Number.isInteger(x)) ? { seeds: "Enter whole numbers, e.g. 0 1 2." } : {};
    const { arms, problem } = readArms(form);
    if (problem) bad.arms = problem;
    send((spec) => {
      const base = { ...spec };
      delete base.norm;  // the arms set norm, the seeds set seed
      delete base.seed;
      return api("studies", { method: "POST", json: { base, seeds: text ? seeds : undefined, arms } });
    }, (study) => { location.hash = `#/studies/${encodeURIComponent(study.id)}`; },
    bad, new Set([...names, "seeds", "arms"]));
  });
  form.addEventListener("reset", () => {
    clearErrors(form);
    status.textContent = "";
    setTimeout(syncModel);  // after the controls have their defaults back
  });

  setupUploads(root, {
    onDataset: async (dataset) => {
      await loadDatasets();
      if (form.elements.dataset) form.elements.dataset.value = dataset.id;
    },
    onBundle: (bundle) => {
      addBundle(bundle);
      const select = form.elements.code;
      if (select) {
        select.value = bundle.id;
        syncModel();
      }
      return form.elements.model?.value;
    },
  });

  return {
    /** Build the form from the schema unless done (or under way); a failure is retried next time. */
    load() {
      if (fields) return Promise.resolve();
      loading ||= build().catch((err) => {
        loading = null;
        if (!(err instanceof AuthCancelled)) console.warn("job form:", err);
      });
      return loading;
    },
  };
}
