-- Consul's ServiceID, kept with the endpoint it names: the Consul-compatible API deregisters
-- and passes checks by that ID alone (/v1/agent/service/deregister/<id>,
-- /v1/agent/check/pass/service:<id>), so it must survive restarts and reach every replica.
-- NULL for endpoints registered natively (their Consul ID is derived from service and address).
-- One ID names one instance across the registry: the daemon is one agent for every instance,
-- and Consul keeps IDs unique per agent. No index covers expires_at still, so heartbeats stay
-- HOT updates.
-- depends: 0002.leases

ALTER TABLE endpoints ADD COLUMN instance_id text
    CHECK (instance_id IS NULL OR length(instance_id) BETWEEN 1 AND 128);
CREATE UNIQUE INDEX endpoints_instance_id ON endpoints (instance_id) WHERE instance_id IS NOT NULL;

-- sd_register gains p_instance_id (NULL keeps the ID already stored, so a native re-registration
-- of a Consul-registered endpoint keeps its ID). An instance is an address of a service, so a new
-- ID for the same service and address replaces the old one (a restarted process that drew a new
-- ID takes its address back). An ID that names another endpoint is refused: 23505
-- (unique_violation, mapped to 409) with the reason in DETAIL; the API moves an ID by
-- deregistering its old endpoint first. The old five-argument calls resolve to this function through
-- the default, so replicas still running the previous release keep working during a roll.
DROP FUNCTION sd_register(text, inet, text[], integer, integer);
CREATE FUNCTION sd_register(p_name text, p_ip inet, p_tags text[], p_ttl integer, p_limit integer,
                            p_instance_id text DEFAULT NULL)
RETURNS TABLE (service text, version bigint, prev_version bigint, ip text, tags text[],
               ttl_seconds integer, expires_at double precision, instance_id text)
LANGUAGE plpgsql AS $$
DECLARE
    sid uuid;
    sname text;
    other_name text;
    other_ip text;
BEGIN
    SELECT s.id, s.name, s.version INTO sid, sname, prev_version
    FROM services s WHERE lower(s.name) = lower(p_name) FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'service % not found', quote_literal(p_name) USING ERRCODE = 'P0002';
    END IF;
    IF p_instance_id IS NOT NULL THEN
        SELECT s.name, host(e.ip) INTO other_name, other_ip
        FROM endpoints e JOIN services s ON s.id = e.service_id
        WHERE e.instance_id = p_instance_id AND NOT (e.service_id = sid AND e.ip = p_ip);
        IF FOUND THEN
            RAISE EXCEPTION 'instance ID in use' USING ERRCODE = '23505',
                DETAIL = format('the instance ID %L is already used by service %L at %s: IDs '
                    'are unique across the registry; deregister it first or choose another ID',
                    p_instance_id, other_name, other_ip);
        END IF;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM endpoints e WHERE e.service_id = sid AND e.ip = p_ip)
       AND (SELECT count(*) FROM endpoints e WHERE e.service_id = sid) >= p_limit THEN
        RAISE EXCEPTION 'service % already has % endpoints (the limit)', quote_literal(sname),
            p_limit USING ERRCODE = '54000';
    END IF;
    INSERT INTO endpoints AS e (service_id, ip, tags, ttl_seconds, expires_at, instance_id)
    VALUES (sid, p_ip, p_tags, p_ttl, now() + make_interval(secs => p_ttl), p_instance_id)
    ON CONFLICT ON CONSTRAINT endpoints_pkey DO UPDATE
    SET tags = EXCLUDED.tags, ttl_seconds = EXCLUDED.ttl_seconds,
        expires_at = EXCLUDED.expires_at, updated_at = now(),
        instance_id = coalesce(EXCLUDED.instance_id, e.instance_id)
    RETURNING host(e.ip), e.tags, e.ttl_seconds, extract(epoch FROM e.expires_at)::float8,
              e.instance_id
    INTO ip, tags, ttl_seconds, expires_at, instance_id;
    version := sd_bump(sid, sname, p_ip);
    service := lower(sname);
    RETURN NEXT;
END
$$;
