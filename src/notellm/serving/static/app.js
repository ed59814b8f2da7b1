// The creator's page: two drafts, each analysed with /popularity, /tags and /similar in parallel.
"use strict";

const SIMILAR_K = 5;
const drafts = [];          // {name, root, form, lastScore}
let health = null;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

function parseTags(text) {
  return text.replace(/\[话题\]/g, " ").split(/[\s,，、#]+/).map((t) => t.trim()).filter(Boolean);
}

function readDraft(draft) {
  const data = new FormData(draft.form);
  return {
    title: String(data.get("title") || "").trim(),
    content: String(data.get("content") || "").trim(),
    hashtags: parseTags(String(data.get("hashtags") || "")),
  };
}

// An API error as one readable line: 422 lists name the fields, others carry a message.
function errorText(status, payload) {
  const detail = payload && payload.detail;
  if (Array.isArray(detail)) {
    return detail.map((d) => `${(d.loc || []).filter((p) => p !== "body").join(".")}: ${d.msg}`).join("; ");
  }
  if (typeof detail === "string") return detail;
  return `the server answered ${status}`;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, body) {
  let response;
  try {
    response = await fetch(path, body === undefined ? {} : {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, "cannot reach the server - is `notellm serve` still running?");
  }
  let payload = null;
  try { payload = await response.json(); } catch (err) { payload = null; }
  if (!response.ok) throw new ApiError(response.status, errorText(response.status, payload));
  return payload;
}

// ---- rendering one result section in one of its states: empty | loading | ok | error | unavailable
function setSection(draft, name, state, content) {
  const section = draft.root.querySelector(`.result.${name}`);
  section.dataset.state = state;
  const body = section.querySelector(".body");
  body.replaceChildren();
  if (state === "loading") {
    body.append(el("div", {class: "skeleton", "aria-label": "loading"}, el("span"), el("span"), el("span")));
  } else if (typeof content === "string") {
    body.append(el("p", {class: state === "empty" ? "muted" : "", text: content}));
  } else if (content) {
    body.append(content);
  }
}

function failure(draft, name, err) {
  const state = err.status === 503 ? "unavailable" : "error";
  setSection(draft, name, state, state === "unavailable" ? `Not available on this server: ${err.message}` : err.message);
}

function ordinal(n) {
  const r = Math.round(n), t = r % 100;
  const suffix = t >= 11 && t <= 13 ? "th" : ({1: "st", 2: "nd", 3: "rd"}[r % 10] || "th");
  return `${r}${suffix}`;
}

function renderPopularity(draft, result) {
  draft.lastScore = result.score;
  draft.lastMargin = result.interval ? result.interval.margin : 0;
  const target = result.target || {};
  const name = target.name ? String(target.name).toUpperCase() : "score";
  const pct = result.percentile;
  const iv = result.interval;
  const scoreText = el("span", {"data-testid": "score", text: result.score.toFixed(2)});
  const headline = pct
    ? el("span", {class: "score", "data-testid": "percentile",
                  text: `${ordinal(pct.overall)} percentile`})
    : el("span", {class: "score"}, scoreText);
  const lines = [el("div", {class: "score-line"}, headline,
    el("span", {class: "score-note", text: pct
      ? `more popular than about ${Math.round(pct.overall)}% of ${pct.among}`
      : `${name}: higher means more likes, collects and comments`}))];
  if (pct && pct.category) {
    lines.push(el("p", {class: "percentile-category", "data-testid": "percentile-category",
      text: `In ${pct.category.name}: ${ordinal(pct.category.percentile)} percentile of ${pct.category.notes} notes`}));
  }
  if (pct || iv) {  // the raw score, with how far off the model usually is
    lines.push(el("p", {class: "formula", "data-testid": "interval"}, document.createTextNode(`${name} `),
      pct ? scoreText : document.createTextNode(result.score.toFixed(2)),
      document.createTextNode(iv
        ? `, likely between ${iv.low.toFixed(2)} and ${iv.high.toFixed(2)} (${Math.round(iv.coverage * 100)}% of ` +
          `${iv.from.replace("the model's error on ", "")} fell inside)` : "")));
  }
  if (target.formula) lines.push(el("p", {class: "formula", text: `${name} = ${target.formula}`}));
  setSection(draft, "popularity", "ok", el("div", {}, ...lines));
}

// "title | score" lines of the past-posts panel -> [{title, score}]; a line without a number is an error
function readPastPosts() {
  const lines = document.getElementById("past-posts").value.split("\n").map((l) => l.trim()).filter(Boolean);
  const posts = [];
  lines.forEach((line, i) => {
    const cut = line.lastIndexOf("|");
    const score = cut < 0 ? NaN : Number(line.slice(cut + 1).trim());
    const title = (cut < 0 ? line : line.slice(0, cut)).trim();
    if (!title || !Number.isFinite(score)) throw new Error(`line ${i + 1}: write "title | score", e.g. 火锅分享 | 2.5`);
    posts.push({title, score});
  });
  return posts;
}

function renderColdStart(draft, result) {
  const body = result.score == null
    ? el("p", {class: "muted", text: `The cold-start model did not answer with a number ("${result.answer}").`})
    : el("div", {class: "score-line"},
        el("span", {class: "score", "data-testid": "coldstart-score", text: result.score.toFixed(2)}),
        el("span", {class: "score-note", text: `predicted from your ${result.past_posts} past posts`}));
  setSection(draft, "coldstart", "ok", body);
}

function renderTags(draft, result) {
  const tagsInput = draft.form.elements.hashtags;
  const have = new Set(parseTags(tagsInput.value));
  const chips = el("ul", {class: "chips", "data-testid": "tags"});
  for (const tag of result.hashtags) {
    const chip = el("button", {type: "button", class: "chip", title: "add to the draft", text: `#${tag}`});
    const markAdded = () => { chip.classList.add("added"); chip.disabled = true; };
    if (have.has(tag)) markAdded();
    chip.addEventListener("click", () => {
      const current = parseTags(tagsInput.value);
      if (!current.includes(tag)) tagsInput.value = [...current, tag].map((t) => `#${t}`).join(" ");
      markAdded();
    });
    chips.append(el("li", {}, chip));
  }
  const wrap = el("div", {});
  wrap.append(result.hashtags.length ? chips : el("p", {class: "muted", text: "No hashtag suggested for this draft."}));
  wrap.append(el("p", {class: "category", "data-testid": "category"},
    el("span", {class: "label", text: "Category"}),
    document.createTextNode(result.category.length ? result.category.join(" › ") : "none suggested")));
  setSection(draft, "tags", "ok", wrap);
}

function renderSimilar(draft, result) {
  if (!result.results.length) {
    setSection(draft, "similar", "ok", "The index holds no notes to compare with.");
    return;
  }
  const list = el("ol", {class: "similar-list", "data-testid": "similar"});
  for (const hit of result.results) {
    const pct = Math.max(0, Math.min(1, hit.score)) * 100;
    const category = (hit.category || []).join(" › ");
    list.append(el("li", {class: "similar-item"},
      el("span", {class: "rank", text: String(hit.rank)}),
      el("span", {class: "title", title: `note id ${hit.note_id}`},  // the id only on hover: creators read titles
        el("span", {class: "title-text", text: hit.title || "untitled note"}),
        el("span", {class: "meta", text: category})),
      el("span", {class: "bar-wrap"}, el("span", {class: "bar"}, el("span", {style: `width:${pct.toFixed(0)}%`})),
        document.createTextNode(`cos ${hit.score.toFixed(3)}`))));
  }
  setSection(draft, "similar", "ok", list);
}

async function analyse(draft) {
  const note = readDraft(draft);
  const formError = draft.root.querySelector(".form-error");
  if (!note.title && !note.content) {
    formError.textContent = "Write a title or a body first.";
    formError.hidden = false;
    return;
  }
  formError.hidden = true;
  draft.lastScore = null;
  const button = draft.root.querySelector("button.analyse");
  button.disabled = true;
  for (const name of ["popularity", "tags", "similar"]) setSection(draft, name, "loading");
  const coldSection = draft.root.querySelector(".result.coldstart");
  const pastError = document.getElementById("past-error");
  let past = [];
  try { past = readPastPosts(); pastError.hidden = true; } catch (err) {
    pastError.textContent = err.message; pastError.hidden = false;
  }
  coldSection.hidden = past.length === 0;
  const jobs = [
    api("/popularity", {note}).then((r) => renderPopularity(draft, r), (e) => failure(draft, "popularity", e)),
    api("/tags", {note}).then((r) => renderTags(draft, r), (e) => failure(draft, "tags", e)),
    api("/similar", {note, k: SIMILAR_K}).then((r) => renderSimilar(draft, r), (e) => failure(draft, "similar", e)),
  ];
  if (past.length) {
    setSection(draft, "coldstart", "loading");
    jobs.push(api("/coldstart", {note, past_posts: past}).then((r) => renderColdStart(draft, r),
                                                                (e) => failure(draft, "coldstart", e)));
  }
  await Promise.allSettled(jobs);
  button.disabled = false;
  renderComparison();
}

function comparing() { return document.getElementById("compare-toggle").checked; }

function renderComparison() {
  const banner = document.getElementById("comparison");
  const [a, b] = drafts;
  if (!comparing() || a.lastScore == null || b.lastScore == null) { banner.hidden = true; return; }
  const diff = b.lastScore - a.lastScore;
  const margin = Math.max(a.lastMargin || 0, b.lastMargin || 0, 0.005);
  banner.replaceChildren();
  if (Math.abs(diff) <= margin) {
    banner.append(el("strong", {text: "Too close to call"}),
      `: the drafts differ by ${Math.abs(diff).toFixed(2)}, within the model's usual error of ` +
      `${margin.toFixed(2)}.`);
  } else {
    const [better, winner, loser] = diff > 0 ? ["Draft B", b, a] : ["Draft A", a, b];
    banner.append(el("strong", {text: better}),
      ` is predicted more popular (${Math.abs(diff).toFixed(2)} higher: ` +
      `${winner.lastScore.toFixed(2)} vs ${loser.lastScore.toFixed(2)}).`);
  }
  banner.hidden = false;
}

function addDraft(name, id) {
  const template = document.getElementById("draft-template");
  const root = template.content.firstElementChild.cloneNode(true);
  root.id = id;
  root.querySelector(".draft-name").textContent = name;
  const draft = {name, root, form: root.querySelector("form"), lastScore: null};
  draft.form.addEventListener("submit", (event) => { event.preventDefault(); analyse(draft); });
  const content = draft.form.elements.content;
  const counter = root.querySelector(".counter");
  const count = () => { counter.textContent = `${content.value.length} chars`; };
  content.addEventListener("input", count);
  count();
  document.getElementById("drafts").append(root);
  drafts.push(draft);
  return draft;
}

function applyLimits(limits) {
  for (const draft of drafts) {
    draft.form.elements.title.maxLength = limits.max_title_chars;
    draft.form.elements.content.maxLength = limits.max_content_chars;
  }
}

async function loadHealth() {
  const status = document.getElementById("status");
  try {
    health = await api("/health");
    const index = health.index ? `${health.index.count.toLocaleString()} notes indexed` : "no index";
    status.textContent = `${index} · model ${health.model || "none"}`;
    status.title = status.textContent;
    status.dataset.state = "ok";
    applyLimits(health.limits);
  } catch (err) {
    status.textContent = `server unavailable: ${err.message}`;
    status.dataset.state = "error";
  }
}

function init() {
  addDraft("Draft A", "draft-a");
  addDraft("Draft B", "draft-b");
  const toggle = document.getElementById("compare-toggle");
  const updateCompare = () => {
    drafts[1].root.hidden = !comparing();
    document.getElementById("drafts").classList.toggle("compare", comparing());
    renderComparison();
  };
  toggle.addEventListener("change", updateCompare);
  updateCompare();
  document.getElementById("analyse-all").addEventListener("click", () => {
    const shown = comparing() ? drafts : drafts.slice(0, 1);
    const written = shown.filter((d) => { const n = readDraft(d); return n.title || n.content; });
    for (const draft of written.length ? written : shown.slice(0, 1)) analyse(draft);
  });
  loadHealth();
}

document.addEventListener("DOMContentLoaded", init);
