-- Limits on the number of services and on the named ports of each, checked where every write
-- of them lands (sd_write_batch, and any later writer): triggers, reading the limits of the
-- daemon that writes from its connection's settings (`sd.max_services`, `sd.max_named_ports`,
-- set by the store for every pooled connection). A connection that does not set them (psql, a
-- bulk load) is not limited. A refusal is SQLSTATE 54000 (program_limit_exceeded, mapped to
-- 422 limit_exceeded), with a message for the client; it fails the statement, so a batch is
-- written again write by write and only the write over the limit fails.
-- depends: 0005.group-commit

-- The service count is exact across replicas: creations wait for each other on a
-- transaction-scoped advisory lock, taken after the insert and before the count (each statement
-- of this function sees what committed before it).
CREATE FUNCTION sd_check_services() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_limit integer := nullif(current_setting('sd.max_services', true), '')::integer;
    v_added bigint;
    v_total bigint;
BEGIN
    SELECT count(*) INTO v_added FROM added;
    IF v_limit IS NULL OR v_added = 0 THEN
        RETURN NULL;
    END IF;
    PERFORM pg_advisory_xact_lock(1565417342);  -- 0x5D4E5F7E: one creation at a time
    SELECT count(*) INTO v_total FROM services;
    IF v_total > v_limit THEN
        RAISE EXCEPTION 'the registry already has % services (the limit is %)',
            v_total - v_added, v_limit USING ERRCODE = '54000';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER services_limit AFTER INSERT ON services
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION sd_check_services();

-- Ports are added with their service's row locked (every writer locks it first), so the count
-- of each service's ports cannot race.
CREATE FUNCTION sd_check_named_ports() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_limit integer := nullif(current_setting('sd.max_named_ports', true), '')::integer;
    v_name text;
    v_total bigint;
BEGIN
    IF v_limit IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT s.name, count(*) INTO v_name, v_total
    FROM named_ports p JOIN services s ON s.id = p.service_id
    WHERE p.service_id IN (SELECT service_id FROM added)
    GROUP BY s.id, s.name HAVING count(*) > v_limit
    LIMIT 1;
    IF v_name IS NOT NULL THEN
        RAISE EXCEPTION 'service % may have at most % named ports (the limit), not %',
            quote_literal(v_name), v_limit, v_total USING ERRCODE = '54000';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER named_ports_limit AFTER INSERT ON named_ports
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION sd_check_named_ports();
