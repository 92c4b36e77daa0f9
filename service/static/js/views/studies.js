// The studies list: one row per study (newest first), polled every LIST_POLL_MS while shown.

import { api } from "../api.js";
import { LIST_POLL_MS } from "../config.js";
import { $, badge, h, timeEl } from "../dom.js";
import { isAuthBlocked } from "../token.js";

function studyRow(study) {
  const spec = study.arms[0]?.spec || study.base;
  const href = `#/studies/${encodeURIComponent(study.id)}`;
  return h("tr", { "data-testid": "study-row", "data-study-id": study.id },
    h("td", {}, h("a", { href, "data-testid": "study-link" }, h("code", {}, study.id))),
    h("td", {}, badge(study.state)),
    h("td", {}, spec.dataset ?? ""),
    h("td", {}, `${spec.workers ?? "?"} × ${spec.batch_size_per_worker ?? "?"}`),
    h("td", {}, study.seeds.join(" ")),
    h("td", {}, study.arms.map((a) => a.name).join(", ")),
    h("td", { class: "verdict-cell" }, study.verdict || ""),
    h("td", {}, timeEl(study.created_at)));
}

/** The studies view: {root, title, enter(), leave()}. */
export function studiesView() {
  const root = $("#tpl-studies").content.firstElementChild.cloneNode(true);
  const bind = (name) => $(`[data-bind="${name}"]`, root);
  let timer = null;

  async function load() {
    if (isAuthBlocked()) return;
    try {
      const { studies } = await api("studies");
      bind("rows").replaceChildren(...studies.map(studyRow));
      bind("empty").hidden = studies.length > 0;
      bind("error").hidden = true;
    } catch (err) {
      bind("error").textContent = `Could not load the studies: ${err.message}`;
      bind("error").hidden = false;
    }
  }

  return {
    root,
    title: "Studies",
    enter() {
      load();
      clearInterval(timer);
      timer = setInterval(() => { if (!document.hidden) load(); }, LIST_POLL_MS);
    },
    leave() { clearInterval(timer); },
  };
}
