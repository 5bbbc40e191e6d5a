"""`python -m service_discovery_client` is `sdctl`."""

from service_discovery_client.cli import main

main()
