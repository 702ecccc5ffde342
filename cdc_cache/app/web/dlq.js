"use strict";
// Everything from the server is shown with textContent: payloads are untrusted.

const $ = (selector) => document.querySelector(selector);

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function outcomeText(outcome) {
  if (!outcome) return "";
  return `${outcome.outcome} (${outcome.at}, ${outcome.detail})`;
}

function filterParams() {
  const params = new URLSearchParams();
  for (const [name, value] of new FormData($("#filters"))) {
    if (String(value).trim()) params.set(name, String(value).trim());
  }
  return params;
}

function say(text) {
  $("#status").textContent = text;
}

async function call(url, options) {
  const response = await fetch(url, { credentials: "same-origin", ...options });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) {
    window.location.assign("/dlq");
    throw new Error("signed out");
  }
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

async function load() {
  say("loading…");
  const { entries } = await call(`/dlq/api/entries?${filterParams()}`);
  const body = $("#entries tbody");
  body.replaceChildren();
  for (const entry of entries) {
    const row = document.createElement("tr");
    row.dataset.id = entry.id;
    const pick = document.createElement("input");
    pick.type = "checkbox";
    pick.className = "pick";
    pick.value = entry.id;
    row.appendChild(document.createElement("td")).appendChild(pick);
    cell(row, entry.failed_at);
    cell(row, entry.kind);
    cell(row, entry.table);
    const source = entry.source || {};
    cell(row, `${source.topic}[${source.partition}]@${source.offset}`);
    cell(row, entry.reason, "reason");
    const outcome = entry.outcome;
    cell(row, outcomeText(outcome), outcome ? `outcome outcome-${outcome.outcome}` : "outcome");
    const actions = document.createElement("td");
    const show = document.createElement("button");
    show.type = "button";
    show.textContent = "Details";
    show.className = "show";
    show.addEventListener("click", () => detail(entry.id).catch((e) => say(e.message)));
    const replay = document.createElement("button");
    replay.type = "button";
    replay.textContent = "Replay";
    replay.className = "replay";
    replay.addEventListener("click", () => replayIds([entry.id]).catch((e) => say(e.message)));
    actions.append(show, " ", replay);
    row.appendChild(actions);
    body.appendChild(row);
  }
  say(`${entries.length} entr${entries.length === 1 ? "y" : "ies"}`);
}

async function detail(id) {
  const entry = await call(`/dlq/api/entries/${encodeURIComponent(id)}`);
  $("#detail-id").textContent = entry.id;
  const fields = $("#detail-fields");
  fields.replaceChildren();
  const source = entry.source || {};
  const shown = {
    kind: entry.kind, reason: entry.reason, error_class: entry.error_class,
    failed_at: entry.failed_at, table: entry.table, position: entry.position,
    primary_key: JSON.stringify(entry.primary_key),
    source: `${source.topic} partition ${source.partition} offset ${source.offset}`,
    attempt: `${entry.attempt} of ${entry.max_attempts}`,
    last_replay: outcomeText(entry.outcome),
    withheld: (entry.withheld || []).join("; "),
  };
  for (const [name, value] of Object.entries(shown)) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = value == null ? "" : String(value);
    fields.append(dt, dd);
  }
  $("#detail-message").textContent = JSON.stringify(entry.message, null, 2);
  $("#detail-stack").textContent = entry.stack || "";
  $("#detail").hidden = false;
}

async function replay(body, what) {
  say(`replaying ${what}…`);
  const { outcomes } = await call("/dlq/api/replay", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  await load();
  const counts = {};
  for (const o of outcomes) counts[o.outcome] = (counts[o.outcome] || 0) + 1;
  say(`replayed ${outcomes.length}: ` +
      Object.entries(counts).map(([k, v]) => `${v} ${k}`).join(", "));
}

function replayIds(ids) {
  if (!ids.length) {
    say("select entries first");
    return Promise.resolve();
  }
  return replay({ ids }, `${ids.length} entr${ids.length === 1 ? "y" : "ies"}`);
}

function selectedIds() {
  return [...document.querySelectorAll("input.pick:checked")].map((box) => box.value);
}

document.addEventListener("DOMContentLoaded", () => {
  $("#filters").addEventListener("submit", (event) => {
    event.preventDefault();
    load().catch((e) => say(e.message));
  });
  $("#replay-selected").addEventListener("click", () =>
    replayIds(selectedIds()).catch((e) => say(e.message)));
  $("#replay-matching").addEventListener("click", () => {
    const filter = Object.fromEntries(filterParams());
    const body = Object.keys(filter).length ? { filter } : { all: true };
    replay(body, "all matching entries").catch((e) => say(e.message));
  });
  $("#select-all").addEventListener("change", (event) => {
    for (const box of document.querySelectorAll("input.pick")) box.checked = event.target.checked;
  });
  load().catch((e) => say(e.message));
});
