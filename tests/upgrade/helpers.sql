-- Helpers of the upgrade layer, in their own schema of the database that is updated. They are
-- PL/pgSQL only, so nothing here depends on an object of the extension (which would stand in
-- the way of an update script that replaces one).
SET client_min_messages = warning;
CREATE SCHEMA upgrade_check;

-- every check's verdict, counted by run.sh
CREATE TABLE upgrade_check.results (
    n       serial PRIMARY KEY,
    name    text    NOT NULL,
    ok      boolean NOT NULL,
    detail  text
);

-- What the database answered before the update, to be asked again after it.
CREATE TABLE upgrade_check.answers (
    name    text PRIMARY KEY,
    tenant  text  NOT NULL,
    query   text  NOT NULL,
    before  jsonb
);

-- Facts noted before the update (positions, versions, cursors).
CREATE TABLE upgrade_check.facts (
    name    text PRIMARY KEY,
    value   jsonb
);

-- The tables of the extension before the update, with the columns that nothing changes on its
-- own (the worker moves checkpoints and retries deliveries), and their rows in those columns.
CREATE TABLE upgrade_check.before_tables (
    tbl     text PRIMARY KEY,
    cols    text[] NOT NULL
);
CREATE TABLE upgrade_check.before_rows (
    tbl     text  NOT NULL REFERENCES upgrade_check.before_tables,
    r       jsonb NOT NULL
);

-- Runs a query that returns one jsonb as the given tenant; the tenant is a local setting, so it
-- ends with the statement's transaction.
CREATE FUNCTION upgrade_check.as_tenant(tenant text, query text) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    result jsonb;
BEGIN
    PERFORM set_config('eventstore.tenant_id', tenant, true);
    EXECUTE query INTO result;
    PERFORM set_config('eventstore.tenant_id', '', true);
    RETURN result;
END
$$;

-- The rows of a table as jsonb objects of the given columns only.
CREATE FUNCTION upgrade_check.table_rows(tbl text, cols text[]) RETURNS SETOF jsonb
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY EXECUTE format(
        'SELECT (SELECT jsonb_object_agg(k, v) FROM jsonb_each(to_jsonb(t)) AS e(k, v) WHERE k = ANY ($1)) FROM %s t',
        tbl) USING cols;
END
$$;

-- Whether `after` still says everything `before` said: the same scalars, arrays of the same
-- length whose elements keep theirs, objects with every key of before (new keys are allowed:
-- a column added by the update is not a lost value).
CREATE FUNCTION upgrade_check.keeps(before jsonb, after jsonb) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    k text;
    i int;
BEGIN
    IF before IS NULL OR after IS NULL THEN
        RETURN before IS NULL AND after IS NULL;
    ELSIF jsonb_typeof(before) = 'object' AND jsonb_typeof(after) = 'object' THEN
        FOR k IN SELECT jsonb_object_keys(before) LOOP
            IF NOT after ? k OR NOT upgrade_check.keeps(before -> k, after -> k) THEN
                RETURN false;
            END IF;
        END LOOP;
        RETURN true;
    ELSIF jsonb_typeof(before) = 'array' AND jsonb_typeof(after) = 'array' THEN
        IF jsonb_array_length(before) <> jsonb_array_length(after) THEN
            RETURN false;
        END IF;
        FOR i IN 0 .. jsonb_array_length(before) - 1 LOOP
            IF NOT upgrade_check.keeps(before -> i, after -> i) THEN
                RETURN false;
            END IF;
        END LOOP;
        RETURN true;
    END IF;
    RETURN before = after;
END
$$;

CREATE FUNCTION upgrade_check.record(name text, ok boolean, detail text) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO upgrade_check.results (name, ok, detail) VALUES (name, ok, detail);
    RETURN CASE WHEN ok THEN 'ok - ' || name ELSE 'not ok - ' || name || E'\n    ' || detail END;
END
$$;

-- A check: runs `got` and `want` (each returns one jsonb) and compares them with `keeps`
-- (want is what must still be said). An error in either is a failure with the error's text.
CREATE FUNCTION upgrade_check.expect(name text, got text, want text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    g jsonb;
    w jsonb;
    state text;
    message text;
BEGIN
    BEGIN
        EXECUTE got INTO g;
        EXECUTE want INTO w;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, message = MESSAGE_TEXT;
        RETURN upgrade_check.record(name, false, format('error %s: %s', state, message));
    END;
    RETURN upgrade_check.record(name, upgrade_check.keeps(w, g),
                                format('got  %s%swant %s', left(g::text, 2000), E'\n    ', left(w::text, 2000)));
END
$$;

-- The SQLSTATE and message of the error a statement raises, or 'no error'.
CREATE FUNCTION upgrade_check.error_of(statement text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    state text;
    message text;
BEGIN
    EXECUTE statement;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, message = MESSAGE_TEXT;
    RETURN state || ' ' || message;
END
$$;

-- Waits (up to `seconds`) until a query returns true; returns whether it did. Each test of the
-- condition takes a fresh snapshot, so it sees what the worker commits meanwhile.
CREATE FUNCTION upgrade_check.wait_until(condition text, seconds int DEFAULT 30) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    deadline timestamptz := clock_timestamp() + make_interval(secs => seconds);
    done boolean;
BEGIN
    LOOP
        EXECUTE condition INTO done;
        IF done THEN
            RETURN true;
        END IF;
        IF clock_timestamp() > deadline THEN
            RETURN false;
        END IF;
        PERFORM pg_sleep(0.05);
    END LOOP;
END
$$;

-- A check: the rows of a table are the ones noted before the update (in the columns noted then).
CREATE FUNCTION upgrade_check.rows_survived(t text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    c text[];
    lost jsonb;
    other jsonb;
    message text;
BEGIN
    SELECT cols INTO c FROM upgrade_check.before_tables WHERE tbl = t;
    SELECT jsonb_agg(x.r) INTO lost FROM (
        SELECT b.r FROM upgrade_check.before_rows b WHERE b.tbl = t
        EXCEPT ALL SELECT upgrade_check.table_rows(t, c)) x;
    SELECT jsonb_agg(x.r) INTO other FROM (
        SELECT upgrade_check.table_rows(t, c) AS r
        EXCEPT ALL SELECT b.r FROM upgrade_check.before_rows b WHERE b.tbl = t) x;
    RETURN upgrade_check.record(format('rows of %s survived the update', t), lost IS NULL AND other IS NULL,
                                format('lost %s%snew or changed %s', left(lost::text, 1500), E'\n    ', left(other::text, 1500)));
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS message = MESSAGE_TEXT;
    RETURN upgrade_check.record(format('rows of %s survived the update', t), false, 'error: ' || message);
END
$$;

-- the checks run partly as the test roles, which record their verdicts too
GRANT USAGE ON SCHEMA upgrade_check TO PUBLIC;
GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA upgrade_check TO PUBLIC;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA upgrade_check TO PUBLIC;
