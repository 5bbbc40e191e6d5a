#!/bin/bash
# The two roles of README "Database roles", created once, when the postgres image initialises an
# empty data directory (it runs /docker-entrypoint-initdb.d/* as POSTGRES_USER, a superuser that
# only this script and the image use). The migration role owns the database and its schema (the
# Job migrates as it); the runtime role may connect, and migration 0010 grants it DML only.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v db="$POSTGRES_DB" \
    -v migrate_user="$SD_MIGRATE_USER" -v migrate_password="$SD_MIGRATE_PASSWORD" \
    -v runtime_user="$SD_RUNTIME_USER" -v runtime_password="$SD_RUNTIME_PASSWORD" <<'SQL'
CREATE ROLE :"migrate_user" LOGIN PASSWORD :'migrate_password';
CREATE ROLE :"runtime_user" LOGIN PASSWORD :'runtime_password' NOSUPERUSER NOCREATEDB NOCREATEROLE;
ALTER ROLE :"migrate_user" SET sd.runtime_role = :'runtime_user';
ALTER DATABASE :"db" OWNER TO :"migrate_user";
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"db" TO :"runtime_user";
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
SQL
