-- Least privilege: the daemon's runtime role gets the DML it needs and nothing else. The role
-- that runs the migrations owns the schema (tables, functions, sequences: all DDL); the runtime
-- role (`sd_runtime` by convention, or the name in the migration role's setting
-- sd.runtime_role: `ALTER ROLE sd_migrate SET sd.runtime_role = 'other'`) reads and writes rows,
-- calls the write functions, and LISTENs/NOTIFYs (which need no grant). Nothing is granted when
-- that role does not exist (a single-role or embedded install): create it before migrating
-- (README: Production, Database roles). Default privileges carry the grants to what later
-- migrations create, so they need no grants of their own.
-- depends: 0004.consul

DO $$
DECLARE
    runtime text := coalesce(nullif(current_setting('sd.runtime_role', true), ''), 'sd_runtime');
    schema text := current_schema();
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = runtime) THEN
        RAISE NOTICE 'role % does not exist: no runtime grants', runtime;
        RETURN;
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', schema, runtime);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %I TO %I',
                   schema, runtime);
    EXECUTE format('GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA %I TO %I', schema, runtime);
    EXECUTE format('GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA %I TO %I', schema, runtime);
    -- the migration library's own tables: the runtime only reads them (serve's pending check)
    EXECUTE format('REVOKE INSERT, UPDATE, DELETE ON %s FROM %I',
                   (SELECT string_agg(format('%I.%I', schemaname, tablename), ', ')
                      FROM pg_tables
                     WHERE schemaname = schema AND tablename LIKE '%yoyo%'),
                   runtime);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I '
                   'GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO %I', schema, runtime);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I '
                   'GRANT USAGE, SELECT ON SEQUENCES TO %I', schema, runtime);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I '
                   'GRANT EXECUTE ON FUNCTIONS TO %I', schema, runtime);
END
$$;
