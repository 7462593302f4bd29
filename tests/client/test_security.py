"""Trust boundaries: whose rights user code runs with, and dumps that restore whole.

An admin role may define handlers; whoever then reads a state, appends, rebuilds or replays
(a superuser included) must not run that code with its own rights: handlers run as the role
that registered them, in a security-restricted operation. A pg_dump/pg_restore round trip keeps
every row and every sequence, so that numbering goes on past the restored rows.
"""

import os
import subprocess

import pytest

from conftest import HOST, PORT, admin_connect, append, expect_error, unique

PG_BIN = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")


@pytest.fixture(scope="module")
def plotter(database):
    """An admin role that tries to become superuser through every kind of handler."""
    role = unique("es_plotter")
    with admin_connect(database) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
        conn.execute("SELECT eventstore.grant_access(%s, 'admin')", (role,))
        conn.execute(f'CREATE SCHEMA "{role}" AUTHORIZATION "{role}"')
        conn.execute("CREATE TABLE public.handler_ran_as (kind text, who text, escalated boolean)")
        conn.execute("GRANT INSERT ON public.handler_ran_as TO PUBLIC")
    yield role
    with admin_connect(database) as conn:
        conn.execute(f'DROP SCHEMA "{role}" CASCADE')
        conn.execute("DROP TABLE public.handler_ran_as")
        conn.execute(f'DROP OWNED BY "{role}"')
        conn.execute(f'DROP ROLE "{role}"')


def escalation_body(kind, role):
    """PL/pgSQL that notes who runs it and, when that is a superuser, tries to make the
    plotter one too (and swallows any error, as an attacker would)."""
    return f"""
        DECLARE escalated boolean := false;
        BEGIN
            IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
                BEGIN
                    EXECUTE format('ALTER ROLE %I SUPERUSER', '{role}');
                    escalated := true;
                EXCEPTION WHEN OTHERS THEN NULL;
                END;
            END IF;
            INSERT INTO public.handler_ran_as VALUES ('{kind}', current_user, escalated);
    """


def is_superuser(conn, role):
    return conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (role,)).fetchone()["rolsuper"]


def ran_as(conn, kind):
    return conn.execute("SELECT who, escalated FROM public.handler_ran_as WHERE kind = %s", (kind,)).fetchall()


def test_a_reducer_handler_runs_as_its_definer_when_a_superuser_reads(connect, plotter, tenant):
    me = connect(user=plotter, tenant=tenant)
    me.execute(f"""CREATE FUNCTION "{plotter}".reduce(state jsonb, e eventstore.event) RETURNS jsonb
                   LANGUAGE plpgsql AS $${escalation_body('reducer', plotter)} RETURN state; END $$""")
    me.execute("SELECT eventstore.define_reducer('plot', 'Tick', handler => %s::regprocedure)",
               (f'"{plotter}".reduce(jsonb, eventstore.event)',))
    append(me, "plot", "1", "Tick")
    superuser = connect(tenant=tenant)
    assert superuser.execute("SELECT version FROM eventstore.get_aggregate_state('plot', '1')").fetchone()["version"] == 1
    assert superuser.execute("SELECT eventstore.create_snapshot('plot', '1') AS v").fetchone()["v"] == 1
    assert not is_superuser(superuser, plotter)
    assert {(r["who"], r["escalated"]) for r in ran_as(superuser, "reducer")} == {(plotter, False)}


def test_an_inline_projection_runs_as_its_registrant_when_a_superuser_appends(connect, plotter, tenant):
    me = connect(user=plotter, tenant=tenant)
    me.execute(f"""CREATE FUNCTION "{plotter}".project(e eventstore.event) RETURNS void
                   LANGUAGE plpgsql AS $${escalation_body('inline', plotter)} END $$""")
    me.execute(f"""CREATE FUNCTION "{plotter}".reset() RETURNS void
                   LANGUAGE plpgsql AS $${escalation_body('reset', plotter)} END $$""")
    me.execute("SELECT eventstore.register_projection('plot_inline', %s::regprocedure, mode => 'inline',"
               " reset => %s::regprocedure)",
               (f'"{plotter}".project(eventstore.event)', f'"{plotter}".reset()'))
    superuser = connect(tenant=tenant)
    append(superuser, "plot", "2", "Tick")
    superuser.execute("SELECT eventstore.rebuild_projection('plot_inline')")
    assert not is_superuser(superuser, plotter)
    for kind in ("inline", "reset"):
        rows = ran_as(superuser, kind)
        assert rows and {(r["who"], r["escalated"]) for r in rows} == {(plotter, False)}, kind


def test_parked_events_are_replayed_as_the_registrant(connect, plotter, tenant):
    superuser = connect(tenant=tenant)
    me = connect(user=plotter, tenant=tenant)
    me.execute(f"""CREATE FUNCTION "{plotter}".replayed(e eventstore.event) RETURNS void
                   LANGUAGE plpgsql AS $${escalation_body('replay', plotter)} END $$""")
    me.execute("SELECT eventstore.register_projection('plot_async', %s::regprocedure, mode => 'inline')",
               (f'"{plotter}".replayed(eventstore.event)',))
    event = append(superuser, "plot", "3", "Tick")
    # park the event by hand, as the worker does after too many failures
    superuser.execute("INSERT INTO eventstore.parked_events (tenant_id, projection, event_id, global_position, error, attempts)"
                      " VALUES (%s, 'plot_async', %s, %s, 'test', 5)", (tenant, event["event_id"], event["global_position"]))
    superuser.execute("DELETE FROM public.handler_ran_as WHERE kind = 'replay'")
    assert superuser.execute("SELECT eventstore.replay_parked_events('plot_async') AS n").fetchone()["n"] == 1
    assert not is_superuser(superuser, plotter)
    assert {(r["who"], r["escalated"]) for r in ran_as(superuser, "replay")} == {(plotter, False)}


def test_a_handler_cannot_change_the_callers_session(connect, plotter, tenant):
    """Inside the restricted operation SET ROLE is refused, and settings end with the call."""
    me = connect(user=plotter, tenant=tenant)
    me.execute(f"""CREATE FUNCTION "{plotter}".setter(state jsonb, e eventstore.event) RETURNS jsonb
                   LANGUAGE plpgsql AS $$
                   BEGIN
                       PERFORM set_config('application_name', 'changed-by-handler', false);
                       PERFORM set_config('eventstore.tenant_id', 'someone-else', false);
                       RETURN state;
                   END $$""")
    me.execute("SELECT eventstore.define_reducer('setter', 'Tick', handler => %s::regprocedure)",
               (f'"{plotter}".setter(jsonb, eventstore.event)',))
    me.execute(f"""CREATE FUNCTION "{plotter}".role_setter(state jsonb, e eventstore.event) RETURNS jsonb
                   LANGUAGE plpgsql AS $$ BEGIN SET ROLE postgres; RETURN state; END $$""")
    me.execute("SELECT eventstore.define_reducer('role_setter', 'Tick', handler => %s::regprocedure)",
               (f'"{plotter}".role_setter(jsonb, eventstore.event)',))
    superuser = connect(tenant=tenant, application_name="mine")
    append(superuser, "setter", "1", "Tick")
    superuser.execute("SELECT * FROM eventstore.get_aggregate_state('setter', '1')")
    settings = superuser.execute("SELECT current_setting('application_name') AS app,"
                                 " current_setting('eventstore.tenant_id') AS t").fetchone()
    assert settings == {"app": "mine", "t": tenant}
    append(superuser, "role_setter", "1", "Tick")
    expect_error("42501", superuser, "SELECT * FROM eventstore.get_aggregate_state('role_setter', '1')")
    assert superuser.execute("SELECT current_user AS u").fetchone()["u"] == "postgres"


# --- dumps -----------------------------------------------------------------------------------


def test_every_table_and_sequence_of_the_extension_is_dumped(connect):
    conn = connect()
    missing = conn.execute(
        """SELECT c.relname FROM pg_class c, pg_extension e
           WHERE e.extname = 'eventstore' AND c.relnamespace = 'eventstore'::regnamespace
             AND c.relkind IN ('r', 'p', 'S') AND NOT c.oid = ANY (e.extconfig)
           ORDER BY 1""").fetchall()
    assert missing == []


def run(*args):
    subprocess.run(args, check=True, timeout=120, capture_output=True)


def test_a_dump_restores_every_row_and_numbering_goes_on(connect, database, tenant):
    conn = connect(tenant=tenant)
    for i in range(3):
        append(conn, "person", f"p{i}", "Registered", {"email": f"p{i}@example.com"})
    conn.execute("SELECT eventstore.redact_subject('email', 'p0@example.com', 'first erasure')")
    conn.execute("SELECT * FROM eventstore.create_webhook_endpoint('http://127.0.0.1:9/hook')")
    append(conn, "person", "p1", "Moved")
    tables = [r["relname"] for r in conn.execute(
        "SELECT relname FROM pg_class WHERE relnamespace = 'eventstore'::regnamespace AND relkind = 'r' ORDER BY 1")]
    before = {t: conn.execute(f"SELECT count(*) AS n FROM eventstore.{t}").fetchone()["n"] for t in tables}
    restored = unique("es_restored")
    dump = f"/tmp/{restored}.dump"
    common = ["-h", HOST, "-p", str(PORT), "-U", "postgres"]
    try:
        run(f"{PG_BIN}/pg_dump", *common, "-Fc", "-f", dump, database)
        with admin_connect() as admin:
            admin.execute(f'CREATE DATABASE "{restored}"')
        run(f"{PG_BIN}/pg_restore", *common, "-d", restored, dump)
        with admin_connect(restored) as other:
            other.execute("SELECT set_config('eventstore.tenant_id', %s, false)", (tenant,))
            after = {t: other.execute(f"SELECT count(*) AS n FROM eventstore.{t}").fetchone()[0] for t in tables}
            assert after == before
            # every sequence goes on past the restored rows
            for seq, table, column in (("events_global_position_seq", "events", "global_position"),
                                       ("redactions_redaction_id_seq", "redactions", "redaction_id"),
                                       ("webhook_attempts_attempt_id_seq", "webhook_attempts", "attempt_id")):
                top = other.execute(f"SELECT coalesce(max({column}), 0) FROM eventstore.{table}").fetchone()[0]
                value = other.execute(f"SELECT last_value FROM eventstore.{seq}").fetchone()[0]
                assert value >= top, seq
            # redaction and appends work on the restored data
            assert other.execute("SELECT eventstore.redact_subject('email', 'p2@example.com', 'after restore')").fetchone()[0] == 1
            row = other.execute("SELECT aggregate_version, global_position FROM eventstore.append_event('person', 'p1', 'Moved', '{}')").fetchone()
            top = conn.execute("SELECT max(global_position) AS m FROM eventstore.events").fetchone()["m"]
            assert row[0] == 3 and row[1] > top
    finally:
        with admin_connect() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{restored}" WITH (FORCE)')
        if os.path.exists(dump):
            os.remove(dump)


@pytest.mark.parametrize("url", [
    "http://[::127.0.0.1]/", "http://[64:ff9b::7f00:1]/", "http://[2002:7f00:1::1]/", "http://[::ffff:127.0.0.1]/",
    "http://[2001::1]/", "http://[fd00::1]/", "http://[fec0::1]/", "http://100.64.0.1/", "http://0.0.0.0/",
    "http://198.18.0.1/", "http://224.0.0.1/", "http://255.255.255.255/", "http://[ff02::1]/", "http://[64:ff9b:1::1]/",
])
def test_webhook_endpoints_at_special_purpose_addresses_are_refused(connect, tenant, url):
    conn = connect(tenant=tenant)
    err = expect_error("22023", conn, "SELECT * FROM eventstore.create_webhook_endpoint(%s)", (url,))
    assert "internal address" in err.diag.message_primary
    assert conn.execute("SELECT count(*) AS n FROM eventstore.webhook_endpoints WHERE tenant_id = %s",
                        (tenant,)).fetchone()["n"] == 0
