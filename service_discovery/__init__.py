"""service-discovery: a PostgreSQL-backed service registry served over DNS, HTTP and gRPC."""

__version__ = "0.1.0"
