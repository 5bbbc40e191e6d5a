// The scenario of tests/consul_client_scenario.py through the npm `consul` client's public API,
// unmodified. Usage: node consul_client.js PORT TOKEN SERVICE. Prints one JSON object of what
// the client saw; exits non-zero on any error.
"use strict";

const Consul = require("consul");

async function main() {
  const [port, token, name] = process.argv.slice(2);
  const consul = new Consul({ host: "127.0.0.1", port: Number(port), defaults: { token } });
  const seen = { version: require("consul/package.json").version };
  seen.leader = await consul.status.leader();

  // 1. register with a TTL check, 2. pass it
  await consul.agent.service.register({
    name, id: `${name}-1`, address: "10.50.0.1", port: 8080, tags: ["primary"],
    check: { ttl: "10s", deregistercriticalserviceafter: "1m" },
  });
  await consul.agent.check.pass({ id: `service:${name}-1`, note: "all good" });

  // 3. list services, 4. the passing instances
  seen.services = (await consul.catalog.service.list())[name];
  const passing = await consul.health.service({ service: name, passing: true });
  seen.passing = passing.map((n) => [n.Service.ID, n.Service.Port]);

  // 5. index-based blocking through the client's watch: its first change is the current
  // state, the next one comes when a second instance registers
  const changes = [];
  const watch = consul.watch({
    method: consul.health.service,
    options: { service: name, passing: true, wait: "30s" },
  });
  const second = new Promise((resolve, reject) => {
    watch.on("change", (data, res) => {
      changes.push({ index: res.headers["x-consul-index"], ids: data.map((n) => n.Service.ID).sort() });
      if (changes.length === 2) resolve();
    });
    watch.on("error", reject);
  });
  while (changes.length === 0) await new Promise((r) => setTimeout(r, 50));
  await consul.agent.service.register({
    name, id: `${name}-2`, address: "10.50.0.2", port: 8080, check: { ttl: "10s" },
  });
  await Promise.race([second, new Promise((_, reject) => setTimeout(() => reject(new Error("no second change")), 60000))]);
  watch.end();
  seen.changes = changes;

  // 6. deregister both
  for (const i of [1, 2]) await consul.agent.service.deregister(`${name}-${i}`);
  seen.after = await consul.health.service(name);
  console.log(JSON.stringify(seen));
  // The ended watch may still hold a blocking request (up to its 30 s wait): do not wait for it.
  process.exit(0);
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : err);
  process.exit(1);
});
