// Compares the daemon's /v1/ answers with HashiCorp's Consul API double
// (@hashicorp/consul-api-double: templates of Consul's answers, rendered here in-process with
// @hashicorp/api-double, no server). Usage: node shape_check.js PORT TOKEN ROUTE...
// Prints {route: {types: [...], casing: [...], extra: [...], missing: [...]}} where
//   types   a field both have, with different JSON types (string, number, array, ...)
//   casing  a field of ours that the double spells with other letter case
//   extra   fields the double does not have (the test checks them against Consul's docs)
//   missing fields the double has and we do not
"use strict";

const fs = require("fs");
const http = require("http");
const path = require("path");
const { promisify } = require("util");

const apiDouble = require("@hashicorp/api-double");

const DOUBLE_DIR = path.dirname(require.resolve("@hashicorp/consul-api-double/package.json"));

function renderDouble(route) {
  const [pathname, search] = route.split("?");
  const query = Object.fromEntries(new URLSearchParams(search || ""));
  // Fixed counts and seed, so every run renders the same double (the templates would
  // otherwise draw them with Math.random).
  const env = { CONSUL_NODE_COUNT: 3, CONSUL_TAG_COUNT: 2, CONSUL_CHECK_COUNT: 3 };
  const double = apiDouble(1, DOUBLE_DIR, promisify(fs.readFile), env, path.resolve)();
  return new Promise((resolve, reject) => {
    const request = { path: pathname, url: route, query, headers: {}, body: "", method: "GET", cookies: {} };
    const response = {
      set() {},
      status() { return this; },
      send(body) { resolve(JSON.parse(body)); },
    };
    double.serve(request, response, () => reject(new Error(`no double for ${route}`)));
  });
}

function fetchOurs(port, token, route) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: "127.0.0.1", port, path: route, headers: { "X-Consul-Token": token } }, (res) => {
      let body = "";
      res.on("data", (chunk) => { body += chunk; });
      res.on("end", () => (res.statusCode === 200 ? resolve(JSON.parse(body)) : reject(new Error(`${route}: ${res.statusCode} ${body}`))));
    });
    req.on("error", reject);
  });
}

function typeOf(value) {
  if (value === null) return "null";
  if (Array.isArray(value)) return "array";
  return typeof value;
}

function compare(ours, theirs, where, out, maps) {
  const a = typeOf(ours);
  const b = typeOf(theirs);
  if (a === "null" || b === "null") return;
  if (a !== b) {
    out.types.push(`${where}: ours ${a}, double ${b}`);
    return;
  }
  if (a === "array") {
    if (ours.length && theirs.length) compare(ours[0], theirs[0], `${where}[]`, out, maps);
    return;
  }
  if (a !== "object") return;
  // Maps keyed by data (service names, IDs, tagged-address names, metadata) are compared by
  // their values' shape, not their keys.
  if (/(Meta|TaggedAddresses)$/.test(where) || maps.has(where)) {
    const ov = Object.values(ours);
    const tv = Object.values(theirs);
    if (ov.length && tv.length) compare(ov[0], tv[0], `${where}{}`, out, maps);
    return;
  }
  const lower = Object.fromEntries(Object.keys(theirs).map((k) => [k.toLowerCase(), k]));
  for (const key of Object.keys(ours)) {
    const field = where ? `${where}.${key}` : key;
    if (key in theirs) compare(ours[key], theirs[key], field, out, maps);
    else if (key.toLowerCase() in lower) out.casing.push(`${field} (double: ${lower[key.toLowerCase()]})`);
    else out.extra.push(field);
  }
  for (const key of Object.keys(theirs)) {
    if (!(key in ours) && !(key.toLowerCase() in Object.fromEntries(Object.keys(ours).map((k) => [k.toLowerCase(), 1])))) {
      out.missing.push(where ? `${where}.${key}` : key);
    }
  }
}

async function main() {
  const [port, token, ...routes] = process.argv.slice(2);
  const report = {};
  for (const route of routes) {
    const out = { types: [], casing: [], extra: [], missing: [] };
    // /v1/agent/services is a map of instance ID -> instance: keyed by data at the top
    const maps = new Set(route.startsWith("/v1/agent/services") ? [""] : []);
    compare(await fetchOurs(Number(port), token, route), await renderDouble(route), "", out, maps);
    report[route] = out;
  }
  console.log(JSON.stringify(report));
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : err);
  process.exit(1);
});
