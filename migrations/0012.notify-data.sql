-- Changes carry their data: every change is also sent on `sd_changes` with what a replica needs
-- to apply it without a read (the endpoint's row, or the whole service when it is small), so ten
-- replicas cost the database ten deliveries of a notification instead of ten reads of every
-- change. A change too large to carry (a service of more than 30 endpoints read whole) is sent
-- without its data, and replicas read it as before.
--
-- Any role that can connect may NOTIFY, so a replica must not take a payload's word for the
-- data: each `sd_changes` payload starts with a tag, sha256(k2 || sha256(k1 || body)) (the
-- nested construction HMAC is built on, with two independent keys), in 32 hex digits. The keys
-- live in sd_notify_key, which only the migration role and the runtime role can read (default
-- privileges, 0010). A payload whose tag does not match is dropped and counted.
--
-- `sd_registry` keeps its payloads unchanged for replicas of earlier releases during a rolling
-- upgrade; a later migration stops sending them.
-- depends: 0011.write-endpoints

CREATE TABLE sd_notify_key (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    k1 bytea NOT NULL,
    k2 bytea NOT NULL
);
-- gen_random_uuid draws from the server's strong random source: 244 random bits per key
INSERT INTO sd_notify_key (k1, k2)
VALUES (sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text, 'UTF8')),
        sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text, 'UTF8')));

-- What a replica needs to apply one change without reading: for a change of one endpoint, its
-- [tags, ttl, expires_at, instance ID] or null once it is gone; for a change of the service as
-- a whole, sd_service_json or null once it is gone. SQL NULL: too large to carry. (PL/pgSQL
-- plans each branch when it first runs it, so an endpoint change reads only its row and locks
-- nothing more.)
CREATE FUNCTION sd_change_data(p_key text, p_ip inet) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_data text;
BEGIN
    IF p_ip IS NOT NULL THEN
        SELECT json_build_array(e.tags, e.ttl_seconds, extract(epoch FROM e.expires_at)::float8,
                                e.instance_id)::text
        INTO v_data
        FROM services s JOIN endpoints e ON e.service_id = s.id AND e.ip = p_ip
        WHERE lower(s.name) = p_key;
        RETURN coalesce(v_data, 'null');
    END IF;
    SELECT CASE WHEN s.endpoint_count <= 30 THEN sd_service_json(s.id)::text END
    INTO v_data
    FROM services s WHERE lower(s.name) = p_key;
    IF NOT FOUND THEN
        RETURN 'null';
    END IF;
    RETURN v_data;
END
$$;

-- Changes in order on sd_changes: {"b": [[service, version, previous version, ip, data], ...]}
-- (an entry without its data has four elements), each payload tagged. At most 2,400 bytes of
-- data ride along per change and chunks close after 5,200 bytes, so a payload stays under
-- PostgreSQL's 8,000 whatever it holds.
CREATE FUNCTION sd_notify_data(p_keys text[], p_versions bigint[], p_prevs bigint[],
                               p_ips inet[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_body text;
    v_k1 bytea;
    v_k2 bytea;
BEGIN
    SELECT k.k1, k.k2 INTO v_k1, v_k2 FROM sd_notify_key k;
    FOR v_body IN
        -- Each endpoint is an index lookup by its key (LIMIT keeps the planner from turning
        -- it into a join, which a plan cached while the table was small would make a scan of
        -- the whole table ever after).
        WITH svc AS MATERIALIZED (
            SELECT DISTINCT ON (lower(s.name)) lower(s.name) AS key, s.id
            FROM services s WHERE lower(s.name) = ANY (p_keys)),
        d AS (
            SELECT u.i, u.k, u.v, u.pv, u.ip,
                   CASE WHEN u.ip IS NULL THEN sd_change_data(u.k, NULL)
                        ELSE coalesce(r.data, 'null') END AS data
            FROM unnest(p_keys, p_versions, p_prevs, p_ips) WITH ORDINALITY AS u(k, v, pv, ip, i)
            LEFT JOIN svc ON svc.key = u.k
            LEFT JOIN LATERAL (
                SELECT json_build_array(e.tags, e.ttl_seconds,
                                        extract(epoch FROM e.expires_at)::float8,
                                        e.instance_id)::text AS data
                FROM endpoints e WHERE e.service_id = svc.id AND e.ip = u.ip
                LIMIT 1) r
            ON u.ip IS NOT NULL)
        SELECT '{"b": [' || string_agg(c.entry, ', ' ORDER BY c.i) || ']}'
        FROM (SELECT x.i, x.entry,
                     sum(octet_length(x.entry) + 2) OVER (ORDER BY x.i) / 5200 AS chunk
              FROM (SELECT d.i,
                           CASE WHEN octet_length(d.data) <= 2400
                                THEN json_build_array(d.k, d.v, d.pv, host(d.ip), d.data::json)
                                ELSE json_build_array(d.k, d.v, d.pv, host(d.ip)) END::text
                               AS entry
                    FROM d) x) c
        GROUP BY c.chunk ORDER BY c.chunk
    LOOP
        PERFORM pg_notify('sd_changes',
            left(encode(sha256(v_k2 || sha256(v_k1 || convert_to(v_body, 'UTF8'))), 'hex'), 32)
            || v_body);
    END LOOP;
END
$$;

-- Every change goes out on both channels: 0005's sd_notify_changes, kept whole under another
-- name, still sends sd_registry; the function of that name now sends sd_changes too.
ALTER FUNCTION sd_notify_changes(text[], bigint[], bigint[], inet[]) RENAME TO sd_notify_registry;

CREATE FUNCTION sd_notify_changes(p_keys text[], p_versions bigint[], p_prevs bigint[],
                                  p_ips inet[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM sd_notify_data(p_keys, p_versions, p_prevs, p_ips);
    PERFORM sd_notify_registry(p_keys, p_versions, p_prevs, p_ips);
END
$$;

-- A single change notifies as a batch of one (whose sd_registry payload is the one sd_bump sent).
CREATE OR REPLACE FUNCTION sd_bump(p_service_id uuid, p_name text, p_ip inet DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v bigint;
    pv bigint;
BEGIN
    SELECT version INTO pv FROM services WHERE id = p_service_id;
    UPDATE registry_state SET version = version + 1 RETURNING version INTO v;
    UPDATE services SET version = v, updated_at = now() WHERE id = p_service_id;
    PERFORM sd_notify_changes(ARRAY[lower(p_name)], ARRAY[v], ARRAY[pv], ARRAY[p_ip]);
    RETURN v;
END
$$;
