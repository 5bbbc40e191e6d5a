"""One scenario through a Python Consul client's public API, unmodified: py-consul or
python-consul2, whichever `import consul` finds (tests/test_consul_clients.py runs it once with
each). Usage: consul_client_scenario.py PORT TOKEN SERVICE. Prints one JSON object of what the
client saw; exits non-zero on any error.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from importlib import metadata
from typing import Any

import consul


def main() -> None:
    port, token, name = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    c = consul.Consul(host="127.0.0.1", port=port, token=token)
    seen: dict[str, Any] = {"client": consul.__file__, "leader": c.status.leader()}
    for dist in metadata.distributions():  # the distribution that provided this `consul`
        if any(str(dist.locate_file(f)) == consul.__file__ for f in dist.files or ()):
            seen["version"] = f"{dist.metadata['Name']} {dist.version}"

    # 1. register with a TTL check, 2. pass it
    assert c.agent.service.register(
        name, service_id=f"{name}-1", address="10.40.0.1", port=8080, tags=["primary"],
        check=consul.Check.ttl("10s"),
    )  # fmt: skip
    assert c.agent.check.ttl_pass(f"service:{name}-1", "all good")

    # 3. list services, 4. the passing instances
    index, services = c.catalog.services()
    seen["services"] = services.get(name)
    index, nodes = c.health.service(name, passing=True)
    seen["passing"] = [(n["Service"]["ID"], n["Service"]["Port"]) for n in nodes]
    seen["checks"] = [ch["Status"] for n in nodes for ch in n["Checks"]]

    # 5. a blocking query on that index returns when a second instance registers
    result: dict[str, Any] = {}

    def block() -> None:
        started = time.monotonic()
        new_index, new_nodes = c.health.service(name, index=index, wait="30s", passing=True)
        result.update(index=new_index, ids=sorted(n["Service"]["ID"] for n in new_nodes),
                      seconds=time.monotonic() - started)  # fmt: skip

    waiter = threading.Thread(target=block)
    waiter.start()
    time.sleep(0.5)
    seen["blocked"] = waiter.is_alive()
    assert c.agent.service.register(
        name, service_id=f"{name}-2", address="10.40.0.2", port=8080, check=consul.Check.ttl("10s")
    )
    waiter.join(60)
    seen["woken"] = {**result, "moved": int(result["index"]) > int(index)}

    # 6. deregister both
    for i in (1, 2):
        assert c.agent.service.deregister(f"{name}-{i}")
    seen["after"] = c.health.service(name)[1]
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
