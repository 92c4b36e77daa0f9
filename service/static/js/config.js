// Constants shared by the dashboard's modules.

/** Base URL of the REST API, relative to the page (works behind a prefixing proxy). */
export const API = new URL("v1/", document.baseURI);
/** The service's OpenAPI description (open, like the page itself). */
export const OPENAPI_URL = new URL("openapi.json", document.baseURI);
export const TOKEN_KEY = "syncbn.apiToken";
export const FINAL = new Set(["succeeded", "failed", "cancelled"]);
export const BUILTIN_DATASETS = [
  { id: "digits", label: "digits — 8×8 handwritten digits" },
  { id: "synthetic", label: "synthetic — Gaussian classes, 16 features (fast)" },
  { id: "shapes", label: "shapes — segmentation, 4 classes" },
];
export const LIST_POLL_MS = 2000;
export const LOGS_POLL_MS = 5000;
export const PAGE_SIZE = 50;
export const RANK_COLORS = ["#2563eb", "#ea580c", "#16a34a", "#9333ea", "#dc2626", "#0891b2",
  "#ca8a04", "#db2777", "#4b5563", "#65a30d"];
