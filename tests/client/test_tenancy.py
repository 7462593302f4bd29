"""Tenant isolation and privileges, as non-superuser application roles."""

import json
import uuid

import pytest

from conftest import (admin_connect, append, append_events, backend_pid, expect_error, feed_lag, follow,
                      new_events, read_all, read_stream, stats, stream_version, unique)


@pytest.fixture(scope="module")
def roles(database):
    """Cluster-wide roles with unique names: two writers, a reader, an admin and one without
    access. Dropped (with their privileges) afterwards."""
    names = {k: unique(f"es_{k}") for k in ("app_a", "app_b", "reader", "admin", "nobody", "claims", "strict")}
    with admin_connect(database) as conn:
        for name in names.values():
            conn.execute(f'CREATE ROLE "{name}" LOGIN')
        for k, access in (("app_a", "writer"), ("app_b", "writer"), ("reader", "reader"), ("admin", "admin"),
                          ("claims", "writer"), ("strict", "writer")):
            conn.execute("SELECT eventstore.grant_access(%s, %s)", (names[k], access))
        # tenant_claim and require_tenant are superuser settings: a DBA sets them per role
        conn.execute(f'ALTER ROLE "{names["claims"]}" SET eventstore.tenant_claim = \'app_metadata.org_id\'')
        conn.execute(f'ALTER ROLE "{names["strict"]}" SET eventstore.require_tenant = on')
    yield names
    with admin_connect(database) as conn:
        for name in names.values():
            conn.execute(f'DROP OWNED BY "{name}"')
            conn.execute(f'DROP ROLE "{name}"')


@pytest.fixture
def tenants():
    return unique("a"), unique("b")


def claims_tx(conn, claims, tenant_claim=None):
    """Opens a transaction carrying PostgREST-style JWT claims (transaction-local)."""
    conn.execute("BEGIN")
    if tenant_claim is not None:
        conn.execute("SELECT set_config('eventstore.tenant_claim', %s, true)", (tenant_claim,))
    conn.execute("SELECT set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))


def current_tenant(conn):
    return conn.execute("SELECT eventstore.current_tenant() AS t").fetchone()["t"]


def test_tenants_are_isolated_everywhere(connect, roles, tenants):
    ta, tb = tenants
    a = connect(user=roles["app_a"])
    a.execute(f"SET eventstore.tenant_id = '{ta}'")
    assert current_tenant(a) == ta
    a_rows = append_events(a, "order", "1", new_events(3, "Placed"), expected_version=0)
    append(a, "customer", "9", "Registered", {"secret": "a-only"})

    b = connect(user=roles["app_b"])
    claims_tx(b, {"sub": "user-b", "role": "authenticated", "tenant_id": tb})
    assert current_tenant(b) == tb
    # the same stream name is a stream of its own in tenant B
    b_row = append(b, "order", "1", "Placed", {"tenant": "b"}, expected_version=0)
    assert b_row["aggregate_version"] == 1
    b.execute("COMMIT")
    claims_tx(b, {"tenant_id": tb})
    err = expect_error("23P01", b, "SELECT eventstore.append_event('order', '1', 'X', '{}', expected_version => 3)")
    assert "actual version 1" in err.diag.message_detail
    b.execute("ROLLBACK")

    claims_tx(b, {"tenant_id": tb})
    assert [r["event_id"] for r in b.execute("SELECT event_id FROM eventstore.events")] == [b_row["event_id"]]
    assert b.execute(f"SELECT count(*) AS n FROM eventstore.events WHERE tenant_id = '{ta}'").fetchone()["n"] == 0
    assert b.execute("SELECT tenant_id, aggregate_type, aggregate_id, version FROM eventstore.streams").fetchall() == [
        {"tenant_id": tb, "aggregate_type": "order", "aggregate_id": "1", "version": 1}]
    assert [r["event_id"] for r in read_stream(b, "order", "1")] == [b_row["event_id"]]
    assert read_stream(b, "customer", "9") == []
    assert stream_version(b, "order", "1") == 1
    assert stream_version(b, "customer", "9") == 0
    rows, _ = follow(b)
    assert [r["event_id"] for r in rows] == [b_row["event_id"]]
    assert read_all(b, aggregate_types=["customer"]) == []
    s = stats(b)
    assert (s["total_events"], s["total_streams"], s["events_by_type"], s["events_by_aggregate_type"]) == (
        1, 1, {"Placed": 1}, {"order": 1})
    b.execute("COMMIT")

    # ... and tenant A sees its own, not B's
    assert stream_version(a, "order", "1") == 3
    assert [r["event_id"] for r in read_stream(a, "order", "1")] == [r["event_id"] for r in a_rows]
    assert a.execute("SELECT count(*) AS n FROM eventstore.events").fetchone()["n"] == 4
    assert {r["tenant_id"] for r in a.execute("SELECT tenant_id FROM eventstore.streams")} == {ta}
    rows, _ = follow(a)
    assert len(rows) == 4 and {r["tenant_id"] for r in rows} == {ta}
    s = stats(a)
    assert (s["total_events"], s["total_streams"], s["events_by_type"]) == (4, 2, {"Placed": 3, "Registered": 1})

    # a session that names no tenant is the 'default' tenant and sees neither
    other = connect(user=roles["reader"])
    assert current_tenant(other) == "default"
    assert other.execute("SELECT count(*) AS n FROM eventstore.events").fetchone()["n"] == 0
    assert read_stream(other, "order", "1") == [] and stream_version(other, "order", "1") == 0
    assert stats(other)["total_events"] == 0


def test_feed_lag_counts_only_the_tenants_own_events(connect, roles, tenants):
    ta, tb = tenants
    holder = connect(user=roles["app_a"], tenant=ta, autocommit=False)
    append(holder, "order", "held", "Held")
    a = connect(user=roles["app_a"], tenant=ta)
    b = connect(user=roles["app_b"], tenant=tb)
    append_events(a, "order", "2", new_events(2))
    append(b, "order", "2")
    lag_a, lag_b = feed_lag(a), feed_lag(b)
    assert lag_a["held_back_events"] == 2, lag_a
    assert lag_b["held_back_events"] == 1, lag_b
    assert lag_a["blocking_backend"]["pid"] == backend_pid(holder)
    holder.commit()
    assert feed_lag(a)["held_back_events"] == 0 and feed_lag(b)["held_back_events"] == 0


def test_tenant_from_a_dotted_claim_path(connect, roles, tenants):
    tc = unique("c")
    # the role's eventstore.tenant_claim is app_metadata.org_id (set by the superuser)
    dotted = connect(user=roles["claims"])
    claims_tx(dotted, {"sub": "u1", "app_metadata": {"org_id": tc}, "tenant_id": "ignored"})
    assert current_tenant(dotted) == tc
    row = append(dotted, "order", "1", "Placed", expected_version=0)
    assert [r["event_id"] for r in read_stream(dotted, "order", "1")] == [row["event_id"]]
    assert dotted.execute("SELECT DISTINCT tenant_id FROM eventstore.events").fetchall() == [{"tenant_id": tc}]
    dotted.execute("COMMIT")
    # transaction-local settings are gone with the transaction (safe behind a pooler)
    assert current_tenant(dotted) == "default"
    assert stream_version(dotted, "order", "1") == 0
    conn = connect(user=roles["app_a"])
    # an explicit eventstore.tenant_id wins over the claims
    ta, _ = tenants
    conn.execute("BEGIN")
    conn.execute("SET LOCAL eventstore.tenant_id = 'x'")
    conn.execute("SELECT set_config('eventstore.tenant_id', %s, true)", (ta,))
    conn.execute("SELECT set_config('request.jwt.claims', %s, true)", (json.dumps({"tenant_id": tc}),))
    assert current_tenant(conn) == ta
    assert stream_version(conn, "order", "1") == 0
    conn.execute("COMMIT")
    assert current_tenant(conn) == "default"
    # an empty eventstore.tenant_id means: look at the claims
    conn.execute("BEGIN")
    conn.execute("SET LOCAL eventstore.tenant_id = ''")
    conn.execute("SELECT set_config('request.jwt.claims', %s, true)", (json.dumps({"tenant_id": tc}),))
    assert current_tenant(conn) == tc
    assert stream_version(conn, "order", "1") == 1  # the same tenant, named by the default claim
    conn.execute("COMMIT")


def test_tenant_settings_are_for_superusers_only(connect, roles):
    conn = connect(user=roles["app_a"])
    for sql in ("SET eventstore.require_tenant = off",
                "SET eventstore.tenant_claim = 'sub'",
                "SELECT set_config('eventstore.tenant_claim', 'sub', true)",
                "SELECT set_config('eventstore.require_tenant', 'off', false)"):
        expect_error("42501", conn, sql)
    strict = connect(user=roles["strict"])
    expect_error("42501", strict, "RESET eventstore.require_tenant")
    expect_error("42501", strict, "SELECT eventstore.current_tenant()")


def test_require_tenant(connect, roles, tenants):
    ta, _ = tenants
    # the role's eventstore.require_tenant is on (set by the superuser)
    conn = connect(user=roles["strict"])
    for sql in ("SELECT eventstore.current_tenant()",
                "SELECT eventstore.append_event('order', '1', 'E', '{}')",
                "SELECT * FROM eventstore.append_events('order', '1', '[{\"event_type\": \"E\", \"payload\": {}}]')",
                "SELECT * FROM eventstore.read_stream('order', '1')",
                "SELECT eventstore.stream_version('order', '1')",
                "SELECT * FROM eventstore.read_all()",
                "SELECT eventstore.get_event_store_stats()",
                "SELECT eventstore.feed_lag()",
                "SELECT count(*) FROM eventstore.events"):
        err = expect_error("42501", conn, sql)
        assert "tenant" in err.diag.message_primary
    # claims that do not carry the claim do not name a tenant either
    claims_tx(conn, {"sub": "u1"})
    expect_error("42501", conn, "SELECT eventstore.append_event('order', '1', 'E', '{}')")
    conn.execute("ROLLBACK")
    conn.execute(f"SET eventstore.tenant_id = '{ta}'")
    assert append(conn, "order", "req", "E")["aggregate_version"] == 1
    assert stream_version(conn, "order", "req") == 1


def test_app_roles_cannot_write_the_tables(connect, roles, tenants):
    ta, _ = tenants
    conn = connect(user=roles["app_a"], tenant=ta)
    row = append(conn, "order", "w", "E")
    for sql in (
        "INSERT INTO eventstore.events (global_position, event_id, tenant_id, aggregate_type, aggregate_id,"
        " aggregate_version, event_type, payload, occurred_at, recorded_at, transaction_id)"
        f" VALUES (999999, gen_random_uuid(), '{ta}', 'order', 'w', 2, 'E', '{{}}', now(), now(), pg_current_xact_id())",
        "UPDATE eventstore.events SET payload = '{\"hacked\": true}'",
        "DELETE FROM eventstore.events",
        "TRUNCATE eventstore.events",
        f"INSERT INTO eventstore.streams (tenant_id, aggregate_type, aggregate_id, version) VALUES ('{ta}', 'x', 'y', 5)",
        "UPDATE eventstore.streams SET version = 99",
        "DELETE FROM eventstore.streams",
        "TRUNCATE eventstore.streams",
        "SELECT nextval('eventstore.events_global_position_seq')",
    ):
        expect_error("42501", conn, sql)
    assert stream_version(conn, "order", "w") == 1
    assert [r["event_id"] for r in read_stream(conn, "order", "w")] == [row["event_id"]]
    assert read_stream(conn, "order", "w")[0]["payload"] == {}


def test_privileges_follow_grant_access(connect, roles, tenants):
    ta, _ = tenants
    nobody = connect(user=roles["nobody"], tenant=ta)
    for sql in ("SELECT eventstore.append_event('order', '1', 'E', '{}')",
                "SELECT * FROM eventstore.append_events('order', '1', '[{\"event_type\": \"E\", \"payload\": {}}]')",
                "SELECT * FROM eventstore.read_stream('order', '1')",
                "SELECT * FROM eventstore.read_all()",
                "SELECT count(*) FROM eventstore.events",
                "SELECT eventstore.delete_stream('order', '1')"):
        expect_error("42501", nobody, sql)

    reader = connect(user=roles["reader"], tenant=ta)
    assert stream_version(reader, "order", "1") == 0
    assert read_all(reader) == []
    for sql in ("SELECT eventstore.append_event('order', '1', 'E', '{}')",
                "SELECT * FROM eventstore.append_events('order', '1', '[{\"event_type\": \"E\", \"payload\": {}}]')",
                "SELECT eventstore.delete_stream('order', '1')",
                f"SELECT eventstore.grant_access('{roles['reader']}', 'writer')"):
        expect_error("42501", reader, sql)

    writer = connect(user=roles["app_a"], tenant=ta)
    assert append(writer, "order", "p", "E")["aggregate_version"] == 1
    expect_error("42501", writer, "SELECT eventstore.delete_stream('order', 'p')")
    expect_error("42501", writer, f"SELECT eventstore.grant_access('{roles['nobody']}', 'writer')")

    admin = connect(user=roles["admin"], tenant=ta)
    assert append(admin, "order", "p", "E")["aggregate_version"] == 2
    assert admin.execute("SELECT eventstore.delete_stream('order', 'p') AS d").fetchone()["d"] is True
    assert stream_version(writer, "order", "p") == 0


def test_writes_and_deletes_stay_in_their_tenant(connect, roles, tenants):
    ta, tb = tenants
    a = connect(user=roles["app_a"], tenant=ta)
    b_admin = connect(user=roles["admin"], tenant=tb)
    eid = uuid.uuid4()
    row = append(a, "order", "shared", "Placed", event_id=eid)
    append(b_admin, "order", "shared", "Placed")
    # B deleting its stream of that name leaves A's alone
    assert b_admin.execute("SELECT eventstore.delete_stream('order', 'shared', true) AS d").fetchone()["d"] is True
    assert stream_version(b_admin, "order", "shared") == 0
    assert stream_version(a, "order", "shared") == 1
    assert append(a, "order", "shared", "Paid")["aggregate_version"] == 2
    # re-sending A's event id from tenant B never hands out A's row
    err = expect_error("23505", b_admin,
                       "SELECT * FROM eventstore.append_event('order', 'mine', 'E', '{}', event_id => %s)", (eid,))
    assert ta not in str(err)
    assert row["event_id"] == eid


def test_the_log_is_append_only_even_for_the_superuser(connect, tenants):
    ta, _ = tenants
    su = connect(tenant=ta)
    row = append(su, "order", "ao", "E", {"v": 1})
    for sql in ("UPDATE eventstore.events SET payload = '{\"v\": 2}' WHERE event_id = %s",
                "DELETE FROM eventstore.events WHERE event_id = %s"):
        expect_error("42501", su, sql, (row["event_id"],))
    expect_error("42501", su, "TRUNCATE eventstore.events")
    expect_error("42501", su, "TRUNCATE eventstore.events CASCADE")
    stored = su.execute("SELECT payload FROM eventstore.events WHERE event_id = %s", (row["event_id"],)).fetchall()
    assert stored == [{"payload": {"v": 1}}]


def test_reports_do_not_name_another_tenants_backend(connect, roles, tenants):
    """feed_lag() of a tenant whose feed another tenant's transaction holds back says so, but
    not who; an admin is told who. worker_status() shows a non-admin only its own errors."""
    ta, tb = tenants
    holder = connect(user=roles["app_a"], tenant=ta, autocommit=False, application_name="secret-app")
    append(holder, "order", "held", "Held")
    b = connect(user=roles["app_b"], tenant=tb)
    append(b, "order", "after", "Later")
    lag_b = feed_lag(b)
    assert lag_b["held_back_events"] == 1, lag_b
    assert lag_b["blocking_backend"] is None and lag_b["blocking_prepared_transaction"] is None, lag_b
    assert lag_b["blocked_by_other_tenant"] is True, lag_b
    assert "secret-app" not in json.dumps(lag_b) and str(backend_pid(holder)) not in json.dumps(lag_b)
    admin = connect(user=roles["admin"], tenant=tb)
    assert feed_lag(admin)["blocking_backend"]["pid"] == backend_pid(holder)
    own = connect(user=roles["app_a"], tenant=ta)
    assert feed_lag(own)["blocking_backend"]["application_name"] == "secret-app"
    holder.rollback()
    status = b.execute("SELECT eventstore.worker_status() AS s").fetchone()["s"]
    assert status["scope"] == "tenant", status
    assert admin.execute("SELECT eventstore.worker_status() AS s").fetchone()["s"]["scope"] == "server"


def test_a_pinned_role_acts_only_in_its_tenant(connect, database, tenants):
    ta, tb = tenants
    pinned = unique("es_pinned")
    with admin_connect(database) as admin:
        admin.execute(f'CREATE ROLE "{pinned}" LOGIN')
        admin.execute("SELECT eventstore.grant_access(%s, 'writer', tenant => %s)", (pinned, ta))
        # the same pin again is fine; another tenant is refused
        admin.execute("SELECT eventstore.grant_access(%s, 'reader', tenant => %s)", (pinned, ta))
        with pytest.raises(Exception) as info:
            admin.execute("SELECT eventstore.grant_access(%s, 'writer', tenant => %s)", (pinned, tb))
        assert info.value.sqlstate == "22023"
    try:
        b = connect(tenant=tb)
        append(b, "order", "b-only", "Placed", {"secret": "b"})
        conn = connect(user=pinned)
        assert current_tenant(conn) == ta
        append(conn, "order", "1", "Placed")
        assert conn.execute("SELECT DISTINCT tenant_id FROM eventstore.events").fetchall() == [{"tenant_id": ta}]
        # JWT claims naming another tenant change nothing
        claims_tx(conn, {"sub": "u", "tenant_id": tb})
        assert current_tenant(conn) == ta
        assert stream_version(conn, "order", "b-only") == 0
        conn.execute("COMMIT")
        # asking for another tenant fails every call, and reads no row of it
        conn.execute(f"SET eventstore.tenant_id = '{tb}'")
        for sql in ("SELECT eventstore.current_tenant()",
                    "SELECT eventstore.append_event('order', '2', 'E', '{}')",
                    "SELECT * FROM eventstore.read_stream('order', 'b-only')",
                    "SELECT eventstore.stream_version('order', 'b-only')",
                    "SELECT * FROM eventstore.read_all()",
                    "SELECT eventstore.get_event_store_stats()",
                    "SELECT eventstore.feed_lag()",
                    "SELECT * FROM eventstore.get_aggregate_state('order', 'b-only')",
                    "SELECT eventstore.notification_channel()",
                    "SELECT count(*) FROM eventstore.events",
                    "SELECT count(*) FROM eventstore.streams"):
            err = expect_error("42501", conn, sql)
            assert "pinned" in err.diag.message_primary, sql
        conn.execute(f"SET eventstore.tenant_id = '{ta}'")  # its own tenant is fine
        assert stream_version(conn, "order", "1") == 1
    finally:
        with admin_connect(database) as admin:
            admin.execute("DELETE FROM eventstore.pinned_roles WHERE role_id = %s::regrole", (pinned,))
            admin.execute(f'DROP OWNED BY "{pinned}"')
            admin.execute(f'DROP ROLE "{pinned}"')
