// JobSpec's JSON schema (from /openapi.json) turned into form field descriptions.
//
// Every property of components.schemas.JobSpec becomes a field; FIELD_UI only adds what a
// schema cannot say well (short labels, option texts, which section, the order). A property
// added to the pydantic model appears in the form without an edit here.

import { BUILTIN_DATASETS } from "./config.js";

/**
 * Presentation of the known fields, in form order; unknown properties follow, in schema order.
 * A field's hint defaults to the schema's description (a tooltip where the hint differs).
 */
const FIELD_UI = {
  dataset: { label: "Dataset", widget: "dataset", hint: "built-in, or an uploaded .npz or image folder" },
  code: { label: "Code bundle", widget: "code", placeholder: "(none: built-in model)",
    hint: "your own model: upload a bundle below" },
  model: { label: "Model", widget: "model",
    hint: "auto, a built-in model, or with a code bundle its builder as module:function",
    options: { auto: "auto — chosen by the data", mlp: "mlp — multilayer perceptron",
      cnn1d: "cnn1d — 1-D convolutions", resnet: "resnet — small ResNet for images",
      unet: "unet — U-Net for segmentation" } },
  norm: { label: "Normalization", options: { sync: "sync — statistics of the global batch",
    local: "local — each worker's own batch", group: "group — GroupNorm, no batch statistics" } },
  workers: { label: "Workers", hint: "Ray Train processes" },
  batch_size_per_worker: { label: "Batch per worker" },
  epochs: { label: "Epochs" },
  sync_group_size: { label: "Sync group size", placeholder: "all workers",
    hint: "must divide workers; sync only" },
  group_norm_groups: { label: "GroupNorm groups", placeholder: "≤ 32 per layer",
    hint: "group only: must divide every layer's channels" },
  lr: { label: "Learning rate", advanced: true },
  momentum: { label: "Momentum", advanced: true },
  weight_decay: { label: "Weight decay", advanced: true },
  seed: { label: "Seed", advanced: true },
  report_every_steps: { label: "Report every k steps", advanced: true, hint: "0: once per epoch" },
  max_failures: { label: "Max worker failures", advanced: true },
  cpus_per_worker: { label: "CPUs per worker", advanced: true },
  use_gpu: { label: "Use a GPU per worker", advanced: true },
  precise_bn_batches: { label: "Precise BN batches", advanced: true,
    hint: "0: off; else exact BN statistics of this many batches per worker before each evaluation" },
};
const ORDER = Object.keys(FIELD_UI);

/** The schema behind a local "$ref" ("#/components/schemas/X"), or `schema` itself. */
function deref(schema, doc) {
  let out = schema || {};
  for (let hops = 0; out.$ref && hops < 10; hops += 1) {
    const path = out.$ref.replace(/^#\//, "").split("/");
    const target = path.reduce((node, key) => node?.[key], doc);
    if (!target) break;
    const { $ref, ...rest } = out;
    out = { ...target, ...rest };
  }
  return out;
}

/** "batch_size_per_worker" -> "Batch size per worker". */
function humanize(name) {
  const text = name.replace(/_/g, " ");
  return text.charAt(0).toUpperCase() + text.slice(1);
}

/** Pydantic's automatic title ("Batch Size Per Worker"): not worth showing over humanize(). */
function autoTitle(name) {
  return name.split("_").map((w) => w.charAt(0).toUpperCase() + w.slice(1)).join(" ");
}

/**
 * One property -> {type, nullable, choices, min, max, exclusiveMin, exclusiveMax, minLength,
 * maxLength}: "anyOf"/"oneOf" with {"type": "null"} is nullable; const/enum branches are choices.
 */
function flatten(prop, doc) {
  const schema = deref(prop, doc);
  const branches = (schema.anyOf || schema.oneOf || [schema]).map((b) => deref(b, doc));
  let nullable = false;
  const rest = [];
  for (const b of branches) {
    const types = Array.isArray(b.type) ? b.type : [b.type];
    if (types.includes("null")) {
      nullable = true;
      if (types.length > 1) rest.push({ ...b, type: types.find((t) => t !== "null") });
    } else {
      rest.push(b);
    }
  }
  const choices = [];
  for (const b of rest) {
    if ("const" in b) choices.push(b.const);
    else if (Array.isArray(b.enum)) choices.push(...b.enum.filter((v) => v !== null));
    if (b.enum?.includes(null)) nullable = true;
  }
  const isChoice = rest.length > 0 && choices.length > 0
    && rest.every((b) => "const" in b || Array.isArray(b.enum));
  const base = rest.length === 1 ? rest[0] : {};
  let type = base.type || (isChoice ? typeof choices[0] : rest[0]?.type) || "string";
  if (rest.length > 1 && !isChoice) {
    // e.g. int | float: a number; anything else mixed is taken as JSON.
    const types = new Set(rest.map((b) => b.type));
    type = [...types].every((t) => t === "integer" || t === "number") ? "number" : "json";
  }
  return {
    type,
    nullable,
    choices: isChoice ? choices : null,
    min: base.minimum ?? base.exclusiveMinimum,
    max: base.maximum ?? base.exclusiveMaximum,
    exclusiveMin: base.minimum === undefined && base.exclusiveMinimum !== undefined,
    exclusiveMax: base.maximum === undefined && base.exclusiveMaximum !== undefined,
    minLength: base.minLength,
    maxLength: base.maxLength,
  };
}

/** The widget of a flattened property. */
function kindOf(flat, ui) {
  if (ui.widget) return ui.widget;
  if (flat.choices) return "select";
  if (flat.type === "boolean") return "bool";
  if (flat.type === "integer") return "int";
  if (flat.type === "number") return "float";
  if (flat.type === "string") return "text";
  return "json";
}

/**
 * Form fields from the OpenAPI document: [{name, label, kind, value, options: [[value, text,
 * raw]], nullable, required, min, max, exclusiveMin, exclusiveMax, minLength, maxLength, hint,
 * description, placeholder, advanced}], in form order.
 */
export function jobFields(doc, schemaName = "JobSpec") {
  const model = deref(doc?.components?.schemas?.[schemaName], doc);
  if (!model?.properties) throw new Error(`the API description has no ${schemaName} schema`);
  const required = new Set(model.required || []);
  const names = Object.keys(model.properties);
  const rank = (name) => (ORDER.includes(name) ? ORDER.indexOf(name) : ORDER.length + names.indexOf(name));
  return names.sort((a, b) => rank(a) - rank(b)).map((name) => {
    const prop = deref(model.properties[name], doc);
    const ui = FIELD_UI[name] || {};
    const flat = flatten(prop, doc);
    const kind = kindOf(flat, ui);
    const hasDefault = "default" in prop;
    const title = prop.title && prop.title !== autoTitle(name) ? prop.title : null;
    let options = null;
    if (kind === "select") {
      options = flat.choices.map((raw) => [String(raw), ui.options?.[raw] ?? String(raw), raw]);
      if (flat.nullable) options.unshift(["", ui.placeholder ?? "(none)", null]);
    } else if (kind === "dataset") {
      options = BUILTIN_DATASETS.map((d) => [d.id, d.label, d.id]);
    } else if (kind === "code") {
      // Uploaded bundles are added by the form (GET /v1/code).
      options = [["", ui.placeholder ?? "(none)", null]];
    } else if (kind === "model") {
      // Suggestions (a <datalist>): the schema's examples are the built-in models.
      const examples = Array.isArray(prop.examples) ? prop.examples : Object.keys(ui.options || {});
      options = examples.filter((x) => typeof x === "string")
        .map((x) => [x, ui.options?.[x] ?? x, x]);
    }
    return {
      name,
      label: ui.label ?? title ?? humanize(name),
      kind,
      value: hasDefault ? prop.default : undefined,
      options,
      nullable: flat.nullable,
      required: required.has(name) && !hasDefault,
      min: flat.min,
      max: flat.max,
      exclusiveMin: flat.exclusiveMin,
      exclusiveMax: flat.exclusiveMax,
      minLength: flat.minLength,
      maxLength: flat.maxLength,
      hint: "hint" in ui ? ui.hint : prop.description ?? null,  // hint: null keeps it a tooltip
      description: prop.description ?? null,
      placeholder: kind === "code" ? null
        : ui.placeholder ?? (flat.nullable && !hasDefault ? "none" : null),
      // Known fields keep their section; a new one goes with the advanced settings unless the
      // job cannot be submitted without it.
      advanced: ui.advanced ?? (name in FIELD_UI ? false : !(required.has(name) && !hasDefault)),
    };
  });
}
