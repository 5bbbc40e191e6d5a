-- The registry: services, their named ports and endpoints, and the registry version.
-- Core PostgreSQL only (no extensions): the embedded server ships no contrib.

CREATE TABLE registry_state (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    version bigint NOT NULL
);
INSERT INTO registry_state (id, version) VALUES (true, 0);

CREATE TABLE services (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 63),
    attributes jsonb NOT NULL DEFAULT '{}'::jsonb,
    version bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX services_name_key ON services (lower(name));

CREATE TABLE named_ports (
    service_id uuid NOT NULL REFERENCES services (id) ON DELETE CASCADE,
    name text NOT NULL,
    protocol text NOT NULL CHECK (protocol IN ('tcp', 'udp', 'sctp')),
    port integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
    priority integer NOT NULL DEFAULT 1 CHECK (priority BETWEEN 0 AND 65535),
    weight integer NOT NULL DEFAULT 1 CHECK (weight BETWEEN 0 AND 65535),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (service_id, name)
);

CREATE TABLE endpoints (
    service_id uuid NOT NULL REFERENCES services (id) ON DELETE CASCADE,
    ip inet NOT NULL,
    tags text[] NOT NULL DEFAULT '{}',
    ttl_seconds integer CHECK (ttl_seconds > 0),
    expires_at timestamptz,
    lease_batch bigint,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (service_id, ip)
);
CREATE INDEX endpoints_expires_at ON endpoints (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX endpoints_lease_batch ON endpoints (lease_batch) WHERE lease_batch IS NOT NULL;

CREATE SEQUENCE lease_batch_seq;

-- Every change to a service ends with sd_bump: the registry version moves by one (the row
-- lock orders versions exactly as commits), the service records it as its index, and every
-- replica hears of it at commit through NOTIFY. The payload names the service, the new and the
-- previous version of that service and, for a change of one endpoint, its address: a replica
-- whose copy is at the previous version fetches just that endpoint, any other fetches it all.
CREATE FUNCTION sd_bump(p_service_id uuid, p_name text, p_ip inet DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v bigint;
    pv bigint;
BEGIN
    SELECT version INTO pv FROM services WHERE id = p_service_id;
    UPDATE registry_state SET version = version + 1 RETURNING version INTO v;
    UPDATE services SET version = v, updated_at = now() WHERE id = p_service_id;
    PERFORM pg_notify('sd_registry', json_build_object(
        's', lower(p_name), 'v', v, 'pv', pv, 'ip', host(p_ip))::text);
    RETURN v;
END
$$;

-- Registering and deregistering an endpoint are the hot writes: each is one statement (one round
-- trip, one implicit transaction). Errors carry SQLSTATEs the store maps to typed errors:
-- P0002 (no_data_found) -> NotFound, 54000 (program_limit_exceeded) -> LimitExceeded.
CREATE FUNCTION sd_register(p_name text, p_ip inet, p_tags text[], p_ttl integer, p_limit integer)
RETURNS TABLE (service text, version bigint, prev_version bigint, ip text, tags text[],
               ttl_seconds integer, expires_at double precision)
LANGUAGE plpgsql AS $$
DECLARE
    sid uuid;
    sname text;
BEGIN
    SELECT s.id, s.name, s.version INTO sid, sname, prev_version
    FROM services s WHERE lower(s.name) = lower(p_name) FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'service % not found', quote_literal(p_name) USING ERRCODE = 'P0002';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM endpoints e WHERE e.service_id = sid AND e.ip = p_ip)
       AND (SELECT count(*) FROM endpoints e WHERE e.service_id = sid) >= p_limit THEN
        RAISE EXCEPTION 'service % already has % endpoints (the limit)', quote_literal(sname),
            p_limit USING ERRCODE = '54000';
    END IF;
    INSERT INTO endpoints AS e (service_id, ip, tags, ttl_seconds, expires_at)
    VALUES (sid, p_ip, p_tags, p_ttl, now() + make_interval(secs => p_ttl))
    ON CONFLICT ON CONSTRAINT endpoints_pkey DO UPDATE
    SET tags = EXCLUDED.tags, ttl_seconds = EXCLUDED.ttl_seconds,
        expires_at = EXCLUDED.expires_at, updated_at = now()
    RETURNING host(e.ip), e.tags, e.ttl_seconds, extract(epoch FROM e.expires_at)::float8
    INTO ip, tags, ttl_seconds, expires_at;
    version := sd_bump(sid, sname, p_ip);
    service := lower(sname);
    RETURN NEXT;
END
$$;

CREATE FUNCTION sd_deregister(p_name text, p_ip inet)
RETURNS TABLE (service text, version bigint, prev_version bigint)
LANGUAGE plpgsql AS $$
DECLARE
    sid uuid;
    sname text;
BEGIN
    SELECT s.id, s.name, s.version INTO sid, sname, prev_version
    FROM services s WHERE lower(s.name) = lower(p_name) FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'service % not found', quote_literal(p_name) USING ERRCODE = 'P0002';
    END IF;
    DELETE FROM endpoints e WHERE e.service_id = sid AND e.ip = p_ip;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'endpoint % of service % not found', host(p_ip), quote_literal(sname)
            USING ERRCODE = 'P0002';
    END IF;
    version := sd_bump(sid, sname, p_ip);
    service := lower(sname);
    RETURN NEXT;
END
$$;
