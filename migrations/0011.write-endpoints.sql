-- The common batch, written for less: registrations (without an instance ID) and
-- deregistrations of distinct endpoints, which is what a replica's batches are under load.
-- sd_write_batch (0005) takes every write as JSON and reads that JSON five times over (the
-- services to lock, whether the batch is simple, each write's service, then each endpoint's
-- tags and ttl by position); it looks each write's service up on its own, upserts with ON
-- CONFLICT (a speculative insertion: an index probe and a token more per row) and builds a JSON
-- answer per write that the daemon then parses. sd_write_endpoints takes the batch as typed
-- arrays and answers in typed columns:
-- - one statement locks the services named (in id order, as every writer does) and reads each
--   one's id, name, version and endpoint count as locked, for every write at once;
-- - one statement locks the endpoint rows the batch names that exist (in key order, as lease
--   renewals do) and reads their instance IDs: every other row is new, and no other writer can
--   add it while its service's row is locked, so it is a plain INSERT; an existing one a plain
--   UPDATE (a writer that did not lock the service would make the INSERT fail as a whole: the
--   daemon then writes the batch one write at a time, each with its own outcome);
-- - the answer of a registration is what was written (expiry: now() + ttl, as stored).
-- Versions, notifications and outcomes are sd_write_batch's: every successful write takes the
-- next registry version, in order; the service records its last; one notification per batch
-- (as many as the payload limit needs); a write to a missing service or of a missing endpoint
-- fails alone (not_found). A batch that would reach a service's endpoint limit is handed to
-- sd_write_batch whole (in the same statement: it counts write by write), as are any other
-- writes: the daemon sends those there itself. sd_write_batch stays for them and for replicas
-- of the earlier version during a rolling upgrade.
-- - each service's endpoint count is moved in the same update of its row that records its
--   version: one new version of the row per batch instead of two (the dead versions are what
--   every lookup of a service, the foreign-key check of every endpoint row included, scans
--   until vacuum; a service's row is rewritten by every batch that touches it). 0005's triggers
--   skip the function's own statements (`sd.counted`, set only around them) and count every
--   other writer as before.
-- depends: 0006.limits 0010.runtime-role

CREATE OR REPLACE FUNCTION sd_count_endpoints() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('sd.counted', true) = 'on' THEN
        RETURN NULL;  -- the writer moves the count itself (sd_write_endpoints)
    END IF;
    IF TG_OP = 'INSERT' THEN
        UPDATE services s SET endpoint_count = s.endpoint_count + d.n
        FROM (SELECT a.service_id, count(*) AS n FROM added a GROUP BY a.service_id) d
        WHERE s.id = d.service_id;
    ELSE
        UPDATE services s SET endpoint_count = s.endpoint_count - d.n
        FROM (SELECT r.service_id, count(*) AS n FROM removed r GROUP BY r.service_id) d
        WHERE s.id = d.service_id;
    END IF;
    RETURN NULL;
END
$$;

-- p_kinds: 'register' or 'deregister'; p_names: service names; p_ips: addresses, distinct per
-- service; p_tags: a registration's tags as a JSON array (NULL: none); p_ttls: its lease (NULL:
-- none). One row per write, in order: code 'ok' with the version it took and the service's
-- version before it, and for a registration the endpoint as stored (ip, tags, ttl_seconds,
-- expires_at, instance_id); or 'not_found' and a message. The other codes are sd_write_batch's.
CREATE FUNCTION sd_write_endpoints(p_kinds text[], p_names text[], p_ips inet[], p_tags text[],
                                   p_ttls integer[], p_limit integer)
RETURNS TABLE (n integer, code text, message text, service text, version bigint,
               prev_version bigint, ip text, tags text[], ttl_seconds integer,
               expires_at double precision, instance_id text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_keys text[] := ARRAY(SELECT lower(x) FROM unnest(p_names) x);
    v_room boolean;
    v_nc bigint;
    v_base bigint;
    v_deletes boolean := false;
    v_updates boolean := false;
    v_found bigint[];  -- the writes whose endpoint exists (now locked) ...
    v_found_iid text[];  -- ... and its instance ID
    -- per write, in order
    a_sid uuid[];
    a_sname text[];
    a_sver bigint[];
    a_had boolean[];  -- its endpoint exists (and is now locked)
    a_iid text[];  -- that endpoint's instance ID
    a_k bigint[];  -- the rank of its change among the batch's (NULL: it failed)
    a_pk bigint[];  -- that of the previous change of its service in this batch
BEGIN
    WITH locked AS MATERIALIZED (
        SELECT s.id, lower(s.name) AS key, s.name, s.version, s.endpoint_count
        FROM services s WHERE lower(s.name) = ANY (v_keys)
        ORDER BY s.id FOR UPDATE),
    w AS (SELECT u.n, u.kind, l.id, l.name, l.version, l.endpoint_count
          FROM unnest(v_keys, p_kinds) WITH ORDINALITY u(key, kind, n)
          LEFT JOIN locked l ON l.key = u.key)
    SELECT array_agg(w.id ORDER BY w.n), array_agg(w.name ORDER BY w.n),
           array_agg(w.version ORDER BY w.n),
           (SELECT COALESCE(bool_and(r.endpoint_count + r.added <= p_limit), true)
            FROM (SELECT w2.id, w2.endpoint_count, count(*) AS added FROM w w2
                  WHERE w2.kind = 'register' AND w2.id IS NOT NULL
                  GROUP BY w2.id, w2.endpoint_count) r)
    INTO a_sid, a_sname, a_sver, v_room
    FROM w;

    IF NOT v_room THEN  -- some service would reach its limit: sd_write_batch counts write by write
        RETURN QUERY
        SELECT b.n, b.code, b.message, b.service, b.version, b.prev_version,
               b.data->>0, ARRAY(SELECT jsonb_array_elements_text(b.data->1)),
               (b.data->>2)::integer, (b.data->>3)::float8, b.data->>4
        FROM sd_write_batch(
                 (SELECT jsonb_agg(jsonb_build_object(
                             'k', u.kind, 's', u.name, 'ip', host(u.ip),
                             't', COALESCE(u.tags::jsonb, '[]'::jsonb), 'ttl', u.ttl)
                         ORDER BY u.n)
                  FROM unnest(p_kinds, p_names, p_ips, p_tags, p_ttls)
                       WITH ORDINALITY u(kind, name, ip, tags, ttl, n)),
                 p_limit) b;
        RETURN;
    END IF;

    -- Each lock is an index lookup (a join would be planned for a hundred rows and could scan
    -- the whole table).
    SELECT array_agg(o.n), array_agg(l.iid) INTO v_found, v_found_iid
    FROM (SELECT u.n, u.sid, u.ip FROM unnest(a_sid, p_ips) WITH ORDINALITY u(sid, ip, n)
          WHERE u.sid IS NOT NULL ORDER BY u.sid, u.ip) o,
         LATERAL (SELECT e.instance_id AS iid FROM endpoints e
                  WHERE e.service_id = o.sid AND e.ip = o.ip FOR UPDATE) l;
    a_had := array_fill(false, ARRAY[cardinality(p_kinds)]);
    a_iid := array_fill(NULL::text, ARRAY[cardinality(p_kinds)]);
    FOR i IN 1..COALESCE(cardinality(v_found), 0) LOOP
        a_had[v_found[i]] := true;
        a_iid[v_found[i]] := v_found_iid[i];
        IF p_kinds[v_found[i]] = 'deregister' THEN
            v_deletes := true;
        ELSE
            v_updates := true;
        END IF;
    END LOOP;

    PERFORM set_config('sd.counted', 'on', true);  -- counted below, with the versions
    IF v_deletes THEN
        DELETE FROM endpoints e USING unnest(p_kinds, a_sid, p_ips, a_had) u(kind, sid, ip, had)
        WHERE u.kind = 'deregister' AND u.had AND e.service_id = u.sid AND e.ip = u.ip;
    END IF;
    IF v_updates THEN
        UPDATE endpoints e
        SET tags = ARRAY(SELECT jsonb_array_elements_text(u.tags::jsonb)),
            ttl_seconds = u.ttl, expires_at = now() + make_interval(secs => u.ttl),
            updated_at = now()
        FROM unnest(p_kinds, a_sid, p_ips, a_had, p_tags, p_ttls) u(kind, sid, ip, had, tags, ttl)
        WHERE u.kind = 'register' AND u.had AND e.service_id = u.sid AND e.ip = u.ip;
    END IF;
    INSERT INTO endpoints (service_id, ip, tags, ttl_seconds, expires_at)
    SELECT u.sid, u.ip, ARRAY(SELECT jsonb_array_elements_text(u.tags::jsonb)),
           u.ttl, now() + make_interval(secs => u.ttl)
    FROM unnest(p_kinds, a_sid, p_ips, a_had, p_tags, p_ttls) u(kind, sid, ip, had, tags, ttl)
    WHERE u.kind = 'register' AND u.sid IS NOT NULL AND NOT u.had;
    PERFORM set_config('sd.counted', 'off', true);

    WITH ok AS (SELECT u.n, u.sid, row_number() OVER (ORDER BY u.n) AS k
                FROM unnest(p_kinds, a_sid, a_had) WITH ORDINALITY u(kind, sid, had, n)
                WHERE u.sid IS NOT NULL AND (u.kind = 'register' OR u.had)),
         ch AS (SELECT ok.n, ok.k, lag(ok.k) OVER (PARTITION BY ok.sid ORDER BY ok.n) AS pk
                FROM ok)
    SELECT array_agg(ch.k ORDER BY u.n), array_agg(ch.pk ORDER BY u.n), count(ch.k)
    INTO a_k, a_pk, v_nc
    FROM generate_series(1, cardinality(p_kinds)) u(n) LEFT JOIN ch ON ch.n = u.n;

    IF v_nc > 0 THEN
        -- The registry version orders changes as their commits: its row stays locked until
        -- this transaction commits.
        UPDATE registry_state r SET version = r.version + v_nc
        RETURNING r.version - v_nc INTO v_base;
        -- (a registration that succeeded added a row unless its endpoint existed; a
        -- deregistration that succeeded removed one)
        UPDATE services s
        SET version = v_base + m.k, updated_at = now(),
            endpoint_count = s.endpoint_count + m.added
        FROM (SELECT u.sid, max(u.k) AS k,
                     count(*) FILTER (WHERE u.kind = 'register' AND NOT u.had)
                     - count(*) FILTER (WHERE u.kind = 'deregister') AS added
              FROM unnest(a_sid, a_k, p_kinds, a_had) u(sid, k, kind, had)
              WHERE u.k IS NOT NULL GROUP BY u.sid) m
        WHERE s.id = m.sid;
        PERFORM sd_notify_changes(
            array_agg(u.key ORDER BY u.n), array_agg(v_base + u.k ORDER BY u.n),
            array_agg(COALESCE(v_base + u.pk, u.sver) ORDER BY u.n),
            array_agg(u.ip ORDER BY u.n))
        FROM unnest(v_keys, a_k, a_pk, a_sver, p_ips) WITH ORDINALITY u(key, k, pk, sver, ip, n)
        WHERE u.k IS NOT NULL;
    END IF;

    RETURN QUERY
    SELECT u.n::integer,
           CASE WHEN u.k IS NOT NULL THEN 'ok' ELSE 'not_found' END,
           CASE WHEN u.k IS NOT NULL THEN NULL
                WHEN u.sid IS NULL THEN format('service %L not found', p_names[u.n::integer])
                ELSE format('endpoint %s of service %L not found', host(u.ip), u.sname) END,
           u.key, v_base + u.k, COALESCE(v_base + u.pk, u.sver),
           CASE WHEN u.reg THEN host(u.ip) END,
           CASE WHEN u.reg THEN ARRAY(SELECT jsonb_array_elements_text(u.tags::jsonb)) END,
           CASE WHEN u.reg THEN u.ttl END,
           CASE WHEN u.reg THEN extract(epoch FROM now() + make_interval(secs => u.ttl))::float8
           END,
           CASE WHEN u.reg THEN u.iid END
    FROM (SELECT x.*, x.k IS NOT NULL AND x.kind = 'register' AS reg
          FROM unnest(p_kinds, v_keys, a_sid, a_sname, p_ips, a_k, a_pk, a_sver, p_tags, p_ttls,
                      a_iid)
               WITH ORDINALITY x(kind, key, sid, sname, ip, k, pk, sver, tags, ttl, iid, n)) u
    ORDER BY u.n;
END
$$;
