// The studies list: one row per study (newest first), polled every LIST_POLL_MS while shown;
// "Mine" lists only the caller's own (remembered for the tab).

import { api } from "../api.js";
import { LIST_POLL_MS } from "../config.js";
import { $, badge, h, timeEl } from "../dom.js";
import { mineRemembered, onMe, rememberMine, whoAmI } from "../me.js";
import { isAuthBlocked } from "../token.js";

function studyRow(study) {
  const spec = study.arms[0]?.spec || study.base;
  const href = `#/studies/${encodeURIComponent(study.id)}`;
  return h("tr", { "data-testid": "study-row", "data-study-id": study.id },
    h("td", {}, h("a", { href, "data-testid": "study-link" }, h("code", {}, study.id))),
    h("td", { "data-testid": "study-owner" }, study.owner ?? ""),
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
  const mine = bind("mine");
  mine.checked = mineRemembered("studies");
  let timer = null;
  let unsubscribe = null;
  let loads = 0;  // only the latest load's answer is shown (a toggle may overtake a poll)

  async function load() {
    if (isAuthBlocked()) return;
    const seq = ++loads;
    try {
      let path = "studies";
      if (mine.checked) {
        const me = await whoAmI();
        if (!me) throw new Error("could not tell who is signed in (GET /v1/me failed)");
        path += `?${new URLSearchParams({ owner: me.name })}`;
      }
      const { studies } = await api(path);
      if (seq !== loads) return;
      bind("rows").replaceChildren(...studies.map(studyRow));
      bind("empty").textContent = mine.checked ? "You have no studies yet." : "No studies yet.";
      bind("empty").hidden = studies.length > 0;
      bind("error").hidden = true;
    } catch (err) {
      if (seq !== loads) return;
      bind("error").textContent = `Could not load the studies: ${err.message}`;
      bind("error").hidden = false;
    }
  }

  mine.addEventListener("change", () => {
    rememberMine("studies", mine.checked);
    load();
  });

  return {
    root,
    title: "Studies",
    enter() {
      load();
      clearInterval(timer);
      timer = setInterval(() => { if (!document.hidden) load(); }, LIST_POLL_MS);
      unsubscribe = onMe(() => { if (mine.checked) load(); });  // another token: their own
    },
    leave() { clearInterval(timer); unsubscribe?.(); },
  };
}
