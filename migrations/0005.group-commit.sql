-- Group commit: the writes a replica collects while its previous batch commits are written by one
-- call of sd_write_batch: one statement, one transaction, one update of the registry version and
-- as few notifications as the payload limit allows. A notifying transaction holds a
-- database-wide lock from its pre-commit until its commit is flushed, so this price is paid once
-- per batch instead of once per write.
--
-- Each write keeps its own outcome without a savepoint (a subtransaction per write would
-- overflow the 64 cached subtransactions of a backend and slow every snapshot in the cluster):
-- the checks that can fail (service missing, name taken, endpoint limit, endpoint missing) are
-- made before the write and reported per write. Anything else (a constraint the model already
-- checks, a deadlock) fails the whole statement; the caller then writes the batch one write at a
-- time. Writes apply in the order given, so writes to one service apply in arrival order.
--
-- Versions are as before: every successful write takes the next registry version, the service
-- records its last one, and the notification of each change names the version the service had
-- before it, so replicas patch endpoint changes and read other changes whole.
--
-- The endpoints-per-service limit is checked against a count kept in the service's row by
-- triggers, whoever writes (older replicas during a rolling upgrade, the reaper, a bulk load):
-- counting a service's endpoints on every registration read every one of them, often from the
-- heap (rows too recent for the visibility map), and cost more than the rest of the write.
-- depends: 0004.consul

ALTER TABLE services ADD COLUMN endpoint_count integer NOT NULL DEFAULT 0;
UPDATE services s SET endpoint_count = (SELECT count(*) FROM endpoints e WHERE e.service_id = s.id);

-- Per statement, from the rows it inserted or deleted: one update per service a statement
-- touched, however many rows (a row trigger would write a new version of the service's row for
-- every endpoint of a bulk registration). Renewals update endpoints and fire neither.
CREATE FUNCTION sd_count_endpoints() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
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
CREATE TRIGGER endpoints_count_added AFTER INSERT ON endpoints
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION sd_count_endpoints();
CREATE TRIGGER endpoints_count_removed AFTER DELETE ON endpoints
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION sd_count_endpoints();


-- A service with its ports and endpoints as one JSON value: the answer to a write that the
-- writer's copy cannot patch (a new service, new ports).
CREATE FUNCTION sd_service_json(p_id uuid) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT jsonb_build_object(
        'id', s.id,
        'name', s.name,
        'attributes', s.attributes,
        'created_at', extract(epoch FROM s.created_at)::float8,
        'updated_at', extract(epoch FROM now())::float8,
        'ports', COALESCE((
            SELECT jsonb_agg(jsonb_build_array(p.name, p.protocol, p.port, p.priority, p.weight)
                             ORDER BY p.name)
            FROM named_ports p WHERE p.service_id = s.id), '[]'::jsonb),
        'endpoints', COALESCE((
            SELECT jsonb_agg(jsonb_build_array(host(e.ip), e.tags, e.ttl_seconds,
                                               extract(epoch FROM e.expires_at)::float8,
                                               e.instance_id)
                             ORDER BY e.ip)
            FROM endpoints e WHERE e.service_id = s.id), '[]'::jsonb))
    FROM services s WHERE s.id = p_id
$$;

-- The notifications of a batch's changes, in order: the payload sd_bump sends when there is
-- one change; else {"b": [[service, version, previous version, ip], ...]}, as many changes to a
-- payload as fit in 7,600 bytes (PostgreSQL takes 8,000; one change takes 170 at most).
CREATE FUNCTION sd_notify_changes(p_keys text[], p_versions bigint[], p_prevs bigint[],
                                  p_ips inet[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_payload text;
BEGIN
    IF cardinality(p_keys) = 1 THEN
        PERFORM pg_notify('sd_registry', json_build_object(
            's', p_keys[1], 'v', p_versions[1], 'pv', p_prevs[1], 'ip', host(p_ips[1]))::text);
        RETURN;
    END IF;
    FOR v_payload IN
        SELECT '{"b": [' || string_agg(c.entry, ', ' ORDER BY c.i) || ']}'
        FROM (SELECT x.i, x.entry,
                     sum(octet_length(x.entry) + 2) OVER (ORDER BY x.i) / 7600 AS chunk
              FROM (SELECT u.i, json_build_array(u.k, u.v, u.pv, host(u.ip))::text AS entry
                    FROM unnest(p_keys, p_versions, p_prevs, p_ips)
                         WITH ORDINALITY AS u(k, v, pv, ip, i)) x) c
        GROUP BY c.chunk ORDER BY c.chunk
    LOOP
        PERFORM pg_notify('sd_registry', v_payload);
    END LOOP;
END
$$;

-- p_ops: a JSON array of writes, each an object with "k" (kind) and "s" (service name):
--   {"k": "create", "s", "a": attributes, "p": [[name, protocol, port, priority, weight], ...]}
--   {"k": "delete", "s"}
--   {"k": "ports", "s", "p": [[name, protocol, port, priority, weight], ...]}
--   {"k": "register", "s", "ip", "t": [tags], "ttl": seconds or null, "id": instance ID or null}
--   {"k": "deregister", "s", "ip"}
--   {"k": "bulk", "s", "r": replace?, "e": [[ip, [tags], ttl or null], ...]}  (ips distinct)
-- One row per write, in order: code 'ok' with the version it took, the service's version
-- before it (NULL for a deletion, 0 for a new service) and its data (register: [ip, tags, ttl,
-- expires_at, instance ID]; bulk: {"x": ips removed, "s": sd_service_json}; create, ports:
-- sd_service_json), or the code and message of its failure ('not_found', 'already_exists',
-- 'limit_exceeded').
CREATE FUNCTION sd_write_batch(p_ops jsonb, p_limit integer)
RETURNS TABLE (n integer, code text, message text, service text, version bigint,
               prev_version bigint, data jsonb)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_op jsonb;
    v_kind text;
    v_key text;
    v_i integer := 0;
    v_sid uuid;
    v_sname text;
    v_sver bigint;
    v_ip inet;
    v_id text;
    v_code text;
    v_msg text;
    v_data jsonb;
    v_whole boolean;
    v_total bigint;
    v_removed jsonb;
    v_pos integer;
    v_base bigint;
    v_count integer;
    v_simple boolean;
    -- the set-wise path: per write, in order
    a_n bigint[];
    a_kind text[];
    a_key text[];
    a_ip inet[];
    a_sid uuid[];
    a_sname text[];
    a_sver bigint[];
    a_ok boolean[];
    a_data jsonb[];
    a_k bigint[];
    a_pk bigint[];
    -- per write
    r_code text[] := '{}';
    r_msg text[] := '{}';
    r_key text[] := '{}';
    r_data jsonb[] := '{}';
    r_change integer[] := '{}';  -- the write's change, NULL when it failed
    -- per change (successful write)
    v_nc integer := 0;
    c_key text[] := '{}';
    c_ip inet[] := '{}';  -- the one endpoint changed; NULL: read the service whole
    c_prev integer[] := '{}';  -- the service's previous change in this batch (0: none) ...
    c_pv0 bigint[] := '{}';  -- ... else its version before the batch
    c_gone boolean[] := '{}';  -- a deletion: no previous version, as sd_bump says
    -- per service changed
    s_ids uuid[] := '{}';
    s_last integer[] := '{}';
    s_ver0 bigint[] := '{}';
BEGIN
    -- Locks first, each kind in one fixed order: the services named (by id, as the reaper
    -- locks them), then the endpoint rows the batch will update or delete (by key, as lease
    -- renewals lock them), and the registry version last, just before commit. Batches of
    -- other replicas, the reaper and heartbeats then wait for each other but never in a cycle.
    -- Each lock is an index lookup (a join here would be planned for a hundred rows and scan
    -- whole tables for a batch of one).
    PERFORM 1 FROM services s
    WHERE lower(s.name) = ANY (ARRAY(SELECT lower(o->>'s') FROM jsonb_array_elements(p_ops) o))
    ORDER BY s.id FOR UPDATE;

    -- The common batch, registrations (without an instance ID, whose uniqueness is checked write
    -- by write) and deregistrations of distinct endpoints with room for all of them under the
    -- limit, is written set-wise: a dozen statements whatever its size.
    -- (Writes of distinct endpoints commute, so together they do what one after the other
    -- would.) Any other batch is written one write after the other, below.
    SELECT bool_and(o.v->>'k' IN ('register', 'deregister') AND o.v->>'id' IS NULL)
           AND count(DISTINCT (lower(o.v->>'s'), (o.v->>'ip')::inet)) = count(*)
    INTO v_simple FROM jsonb_array_elements(p_ops) o(v);
    IF v_simple THEN
        SELECT array_agg(o.n ORDER BY o.n), array_agg(o.v->>'k' ORDER BY o.n),
               array_agg(lower(o.v->>'s') ORDER BY o.n), array_agg((o.v->>'ip')::inet ORDER BY o.n),
               array_agg(s.id ORDER BY o.n), array_agg(s.name ORDER BY o.n),
               array_agg(s.version ORDER BY o.n)
        INTO a_n, a_kind, a_key, a_ip, a_sid, a_sname, a_sver
        FROM jsonb_array_elements(p_ops) WITH ORDINALITY o(v, n)
        LEFT JOIN LATERAL (SELECT s.id, s.name, s.version FROM services s
                           WHERE lower(s.name) = lower(o.v->>'s') LIMIT 1) s ON true;
        SELECT COALESCE(bool_and(s.endpoint_count + r.n <= p_limit), true) INTO v_simple
        FROM (SELECT u.sid, count(*) AS n FROM unnest(a_kind, a_sid) u(kind, sid)
              WHERE u.kind = 'register' AND u.sid IS NOT NULL GROUP BY u.sid) r
        JOIN services s ON s.id = r.sid;
    END IF;
    IF v_simple THEN
        PERFORM 1
        FROM (SELECT DISTINCT u.sid, u.ip FROM unnest(a_sid, a_ip) u(sid, ip)
              WHERE u.sid IS NOT NULL ORDER BY u.sid, u.ip) w,
             LATERAL (SELECT 1 FROM endpoints e WHERE e.service_id = w.sid AND e.ip = w.ip
                      FOR UPDATE) l;
        WITH stored AS (
            INSERT INTO endpoints AS e (service_id, ip, tags, ttl_seconds, expires_at)
            SELECT u.sid, u.ip, ARRAY(SELECT jsonb_array_elements_text(p_ops->(u.n::integer - 1)->'t')),
                   (p_ops->(u.n::integer - 1)->>'ttl')::integer,
                   now() + make_interval(secs => (p_ops->(u.n::integer - 1)->>'ttl')::integer)
            FROM unnest(a_n, a_kind, a_sid, a_ip) u(n, kind, sid, ip)
            WHERE u.kind = 'register' AND u.sid IS NOT NULL
            ON CONFLICT ON CONSTRAINT endpoints_pkey DO UPDATE
            SET tags = EXCLUDED.tags, ttl_seconds = EXCLUDED.ttl_seconds,
                expires_at = EXCLUDED.expires_at, updated_at = now()
            RETURNING e.service_id, e.ip,
                      jsonb_build_array(host(e.ip), e.tags, e.ttl_seconds,
                                        extract(epoch FROM e.expires_at)::float8,
                                        e.instance_id) AS j),
        gone AS (
            DELETE FROM endpoints e USING unnest(a_kind, a_sid, a_ip) u(kind, sid, ip)
            WHERE u.kind = 'deregister' AND e.service_id = u.sid AND e.ip = u.ip
            RETURNING e.service_id, e.ip)
        SELECT array_agg(st.j ORDER BY u.n),
               array_agg(st.j IS NOT NULL OR g.ip IS NOT NULL ORDER BY u.n)
        INTO a_data, a_ok
        FROM unnest(a_n, a_sid, a_ip) u(n, sid, ip)
        LEFT JOIN stored st ON st.service_id = u.sid AND st.ip = u.ip
        LEFT JOIN gone g ON g.service_id = u.sid AND g.ip = u.ip;
        -- k: the rank of a write's change among the batch's changes; pk: that of the previous
        -- change of its service in this batch
        WITH ok AS (SELECT u.n, u.sid, row_number() OVER (ORDER BY u.n) AS k
                    FROM unnest(a_n, a_sid, a_ok) u(n, sid, ok) WHERE u.ok),
             ch AS (SELECT ok.n, ok.k, lag(ok.k) OVER (PARTITION BY ok.sid ORDER BY ok.n) AS pk
                    FROM ok)
        SELECT array_agg(ch.k ORDER BY u.n), array_agg(ch.pk ORDER BY u.n),
               count(ch.k)
        INTO a_k, a_pk, v_nc
        FROM unnest(a_n) u(n) LEFT JOIN ch ON ch.n = u.n;
        IF v_nc > 0 THEN
            UPDATE registry_state r SET version = r.version + v_nc
            RETURNING r.version - v_nc INTO v_base;
            UPDATE services s SET version = v_base + m.k, updated_at = now()
            FROM (SELECT u.sid, max(u.k) AS k FROM unnest(a_sid, a_k) u(sid, k)
                  WHERE u.k IS NOT NULL GROUP BY u.sid) m
            WHERE s.id = m.sid;
            PERFORM sd_notify_changes(
                array_agg(u.key ORDER BY u.n), array_agg(v_base + u.k ORDER BY u.n),
                array_agg(COALESCE(v_base + u.pk, u.sver) ORDER BY u.n),
                array_agg(u.ip ORDER BY u.n))
            FROM unnest(a_n, a_key, a_k, a_pk, a_sver, a_ip) u(n, key, k, pk, sver, ip)
            WHERE u.k IS NOT NULL;
        END IF;
        RETURN QUERY
        SELECT u.n::integer,
               CASE WHEN u.k IS NOT NULL THEN 'ok' ELSE 'not_found' END,
               CASE WHEN u.k IS NOT NULL THEN NULL
                    WHEN u.sid IS NULL THEN format('service %L not found', p_ops->(u.n::integer - 1)->>'s')
                    ELSE format('endpoint %s of service %L not found', host(u.ip), u.sname) END,
               u.key, v_base + u.k, COALESCE(v_base + u.pk, u.sver), u.data
        FROM unnest(a_n, a_key, a_sid, a_sname, a_ip, a_k, a_pk, a_sver, a_data)
             u(n, key, sid, sname, ip, k, pk, sver, data)
        ORDER BY u.n;
        RETURN;
    END IF;

    FOR v_sid, v_ip IN
        SELECT DISTINCT s.id, t.ip
        FROM (SELECT lower(o->>'s') AS name, (o->>'ip')::inet AS ip
              FROM jsonb_array_elements(p_ops) o WHERE o->>'k' IN ('register', 'deregister')
              UNION ALL
              SELECT lower(o->>'s'), (x->>0)::inet
              FROM jsonb_array_elements(p_ops) o, jsonb_array_elements(o->'e') x
              WHERE o->>'k' = 'bulk' AND NOT (o->>'r')::boolean
              UNION ALL  -- NULL: every endpoint of the service
              SELECT lower(o->>'s'), NULL
              FROM jsonb_array_elements(p_ops) o
              WHERE o->>'k' = 'delete' OR (o->>'k' = 'bulk' AND (o->>'r')::boolean)) t,
             LATERAL (SELECT s.id FROM services s WHERE lower(s.name) = t.name) s
        ORDER BY s.id, t.ip NULLS FIRST
    LOOP
        IF v_ip IS NULL THEN
            v_key := v_sid::text;  -- every row of this service is locked: skip its pairs
            PERFORM 1 FROM endpoints e WHERE e.service_id = v_sid ORDER BY e.ip FOR UPDATE;
        ELSIF v_key IS DISTINCT FROM v_sid::text THEN
            PERFORM 1 FROM endpoints e WHERE e.service_id = v_sid AND e.ip = v_ip FOR UPDATE;
        END IF;
    END LOOP;

    FOR v_op IN SELECT o FROM jsonb_array_elements(p_ops) o LOOP
        v_i := v_i + 1;
        v_kind := v_op->>'k';
        v_key := lower(v_op->>'s');
        v_code := NULL;
        v_msg := NULL;
        v_data := NULL;
        v_ip := NULL;
        v_whole := true;
        IF v_kind = 'create' THEN
            INSERT INTO services AS s (name, attributes)
            VALUES (v_op->>'s', COALESCE(v_op->'a', '{}'::jsonb))
            ON CONFLICT ((lower(name))) DO NOTHING
            RETURNING s.id, s.name, s.version INTO v_sid, v_sname, v_sver;
            IF v_sid IS NULL THEN
                v_code := 'already_exists';
                v_msg := format('service %L already exists', v_op->>'s');
            ELSE
                INSERT INTO named_ports (service_id, name, protocol, port, priority, weight)
                SELECT v_sid, x->>0, x->>1, (x->>2)::integer, (x->>3)::integer,
                       (x->>4)::integer
                FROM jsonb_array_elements(COALESCE(v_op->'p', '[]'::jsonb)) x;
                v_data := sd_service_json(v_sid);
            END IF;
        ELSE
            SELECT s.id, s.name, s.version, s.endpoint_count INTO v_sid, v_sname, v_sver, v_count
            FROM services s WHERE lower(s.name) = v_key;
            IF NOT FOUND THEN
                v_code := 'not_found';
                v_msg := format('service %L not found', v_op->>'s');
            ELSIF v_kind = 'delete' THEN
                DELETE FROM services s WHERE s.id = v_sid;
            ELSIF v_kind = 'ports' THEN
                INSERT INTO named_ports AS p (service_id, name, protocol, port, priority, weight)
                SELECT v_sid, x->>0, x->>1, (x->>2)::integer, (x->>3)::integer,
                       (x->>4)::integer
                FROM jsonb_array_elements(v_op->'p') x
                ON CONFLICT (service_id, name) DO UPDATE
                SET protocol = EXCLUDED.protocol, port = EXCLUDED.port,
                    priority = EXCLUDED.priority, weight = EXCLUDED.weight, updated_at = now();
                v_data := sd_service_json(v_sid);
            ELSIF v_kind = 'register' THEN
                v_ip := (v_op->>'ip')::inet;
                v_whole := false;
                v_id := v_op->>'id';
                IF v_id IS NOT NULL THEN  -- as sd_register: one ID names one endpoint
                    SELECT format('the instance ID %L is already used by another endpoint: IDs '
                                  'are unique across the registry; deregister it first or '
                                  'choose another ID', v_id)
                    INTO v_msg
                    FROM endpoints e
                    WHERE e.instance_id = v_id AND NOT (e.service_id = v_sid AND e.ip = v_ip);
                    IF v_msg IS NOT NULL THEN
                        v_code := 'already_exists';
                    END IF;
                END IF;
                IF v_code IS NOT NULL THEN
                    NULL;
                ELSIF v_count >= p_limit
                   AND NOT EXISTS (SELECT 1 FROM endpoints e WHERE e.service_id = v_sid
                                                               AND e.ip = v_ip)
                THEN
                    v_code := 'limit_exceeded';
                    v_msg := format('service %L already has %s endpoints (the limit)',
                                    v_sname, p_limit);
                ELSE
                    INSERT INTO endpoints AS e (service_id, ip, tags, ttl_seconds, expires_at,
                                                instance_id)
                    VALUES (v_sid, v_ip,
                            ARRAY(SELECT jsonb_array_elements_text(v_op->'t')),
                            (v_op->>'ttl')::integer,
                            now() + make_interval(secs => (v_op->>'ttl')::integer), v_id)
                    ON CONFLICT ON CONSTRAINT endpoints_pkey DO UPDATE
                    SET tags = EXCLUDED.tags, ttl_seconds = EXCLUDED.ttl_seconds,
                        expires_at = EXCLUDED.expires_at, updated_at = now(),
                        instance_id = coalesce(EXCLUDED.instance_id, e.instance_id)
                    RETURNING jsonb_build_array(host(e.ip), e.tags, e.ttl_seconds,
                                                extract(epoch FROM e.expires_at)::float8,
                                                e.instance_id)
                    INTO v_data;
                END IF;
            ELSIF v_kind = 'deregister' THEN
                v_ip := (v_op->>'ip')::inet;
                v_whole := false;
                DELETE FROM endpoints e WHERE e.service_id = v_sid AND e.ip = v_ip;
                IF NOT FOUND THEN
                    v_code := 'not_found';
                    v_msg := format('endpoint %s of service %L not found', host(v_ip), v_sname);
                END IF;
            ELSIF v_kind = 'bulk' THEN
                IF (v_op->>'r')::boolean THEN
                    v_total := jsonb_array_length(v_op->'e');
                ELSIF v_count + jsonb_array_length(v_op->'e') <= p_limit THEN
                    v_total := v_count + jsonb_array_length(v_op->'e');  -- room either way
                ELSE
                    SELECT v_count + count(*) FILTER (WHERE NOT EXISTS (
                               SELECT 1 FROM endpoints e
                               WHERE e.service_id = v_sid AND e.ip = (x->>0)::inet))
                    INTO v_total
                    FROM jsonb_array_elements(v_op->'e') x;
                END IF;
                IF v_total > p_limit THEN
                    v_code := 'limit_exceeded';
                    v_msg := format('service %L would have %s endpoints, over the limit of %s',
                                    v_sname, v_total, p_limit);
                ELSE
                    v_removed := '[]'::jsonb;
                    IF (v_op->>'r')::boolean THEN
                        WITH gone AS (
                            DELETE FROM endpoints e
                            WHERE e.service_id = v_sid AND NOT EXISTS (
                                SELECT 1 FROM jsonb_array_elements(v_op->'e') x
                                WHERE (x->>0)::inet = e.ip)
                            RETURNING host(e.ip) AS ip)
                        SELECT COALESCE(jsonb_agg(g.ip), '[]'::jsonb) INTO v_removed FROM gone g;
                    END IF;
                    INSERT INTO endpoints AS e (service_id, ip, tags, ttl_seconds, expires_at)
                    SELECT v_sid, (x->>0)::inet, ARRAY(SELECT jsonb_array_elements_text(x->1)),
                           (x->>2)::integer, now() + make_interval(secs => (x->>2)::integer)
                    FROM jsonb_array_elements(v_op->'e') x
                    ON CONFLICT ON CONSTRAINT endpoints_pkey DO UPDATE
                    SET tags = EXCLUDED.tags, ttl_seconds = EXCLUDED.ttl_seconds,
                        expires_at = EXCLUDED.expires_at, updated_at = now();
                    -- (no instance ID: one already stored stays). One change, whole: the
                    -- writer's copy takes the service as it is now, as replicas read it.
                    v_data := jsonb_build_object('x', v_removed, 's', sd_service_json(v_sid));
                END IF;
            ELSE
                RAISE EXCEPTION 'unknown write kind %', quote_literal(v_kind)
                    USING ERRCODE = '22023';
            END IF;
        END IF;

        r_code := array_append(r_code, COALESCE(v_code, 'ok'));
        r_msg := array_append(r_msg, v_msg);
        r_key := array_append(r_key, v_key);
        r_data := array_append(r_data, v_data);
        IF v_code IS NOT NULL THEN
            r_change := array_append(r_change, NULL::integer);
            CONTINUE;
        END IF;
        v_pos := array_position(s_ids, v_sid);
        IF v_pos IS NULL THEN
            s_ids := array_append(s_ids, v_sid);
            s_last := array_append(s_last, 0);
            s_ver0 := array_append(s_ver0, v_sver);
            v_pos := cardinality(s_ids);
        END IF;
        v_nc := v_nc + 1;
        c_key := array_append(c_key, v_key);
        c_ip := array_append(c_ip, CASE WHEN v_whole THEN NULL ELSE v_ip END);
        c_prev := array_append(c_prev, s_last[v_pos]);
        c_pv0 := array_append(c_pv0, s_ver0[v_pos]);
        c_gone := array_append(c_gone, v_kind = 'delete');
        s_last[v_pos] := v_nc;
        r_change := array_append(r_change, v_nc);
    END LOOP;

    IF v_nc > 0 THEN
        -- The registry version orders changes as their commits: its row stays locked until
        -- this transaction commits.
        UPDATE registry_state r SET version = r.version + v_nc
        RETURNING r.version - v_nc INTO v_base;
        UPDATE services s SET version = v_base + u.last, updated_at = now()
        FROM unnest(s_ids, s_last) AS u(id, last) WHERE s.id = u.id;
        PERFORM sd_notify_changes(
            c_key, ARRAY(SELECT v_base + g FROM generate_series(1, v_nc) g ORDER BY g),
            ARRAY(SELECT CASE WHEN c_gone[g] THEN NULL WHEN c_prev[g] > 0 THEN v_base + c_prev[g]
                              ELSE c_pv0[g] END
                  FROM generate_series(1, v_nc) g ORDER BY g),
            c_ip);
    END IF;

    FOR j IN 1..v_i LOOP
        n := j;
        code := r_code[j];
        message := r_msg[j];
        service := r_key[j];
        data := r_data[j];
        IF r_change[j] IS NULL THEN
            version := NULL;
            prev_version := NULL;
        ELSE
            version := v_base + r_change[j];
            prev_version := CASE WHEN c_gone[r_change[j]] THEN NULL
                                 WHEN c_prev[r_change[j]] > 0 THEN v_base + c_prev[r_change[j]]
                                 ELSE c_pv0[r_change[j]] END;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

-- A batch of one registration or deregistration is the one a lone client makes, and its latency
-- is that client's: the daemon writes it with these single-statement functions (as before
-- group commit; replicas of the earlier version call them too). sd_register as migration 0004
-- made it, the limit now checked with the kept count.
CREATE OR REPLACE FUNCTION sd_register(p_name text, p_ip inet, p_tags text[], p_ttl integer,
                                       p_limit integer, p_instance_id text DEFAULT NULL)
RETURNS TABLE (service text, version bigint, prev_version bigint, ip text, tags text[],
               ttl_seconds integer, expires_at double precision, instance_id text)
LANGUAGE plpgsql AS $$
DECLARE
    sid uuid;
    sname text;
    scount integer;
    other_name text;
    other_ip text;
BEGIN
    SELECT s.id, s.name, s.version, s.endpoint_count INTO sid, sname, prev_version, scount
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
    IF scount >= p_limit
       AND NOT EXISTS (SELECT 1 FROM endpoints e WHERE e.service_id = sid AND e.ip = p_ip) THEN
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
