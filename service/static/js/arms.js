// A study's arms as the form chooses them: the checked presets and one "sync:k" arm per
// sync-group size ({"name": "sync:2", "overrides": {"sync_group_size": 2}}), in the order
// local, sync, sync groups, group, reference.

/** {arms, problem}: the arms to post, or what is wrong with the choice (for the arms field). */
export function readArms(form) {
  const checked = [...form.querySelectorAll('input[name="arm"]:checked')].map((el) => el.value);
  const text = form.elements.arms?.value.trim() ?? "";
  const sizes = text ? text.split(/[\s,]+/).map(Number) : [];
  if (sizes.some((k) => !Number.isInteger(k) || k < 1)) {
    return { arms: null, problem: "Enter group sizes as whole numbers, e.g. 2 (or 2 4)." };
  }
  const groups = [...new Set(sizes)].map((k) => ({ name: `sync:${k}`, overrides: { sync_group_size: k } }));
  const before = checked.filter((name) => name === "local" || name === "sync");
  const after = checked.filter((name) => name === "group" || name === "reference");
  const arms = [...before, ...groups, ...after];
  return arms.length ? { arms, problem: null } : { arms: null, problem: "Choose at least one arm." };
}
