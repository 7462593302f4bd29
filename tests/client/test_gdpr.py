"""GDPR redaction: payloads erased in place, audited, state recomputed."""

import json
import uuid

import psycopg
import pytest
from psycopg.types.json import Jsonb

from conftest import (admin_connect, append, create_snapshot, define_aggregate, expect_error, get_state,
                      read_stream, snapshot_rows, stored_events, unique)

REDACTED = {"redacted": True}


@pytest.fixture(scope="module")
def roles(database):
    """A login role with admin access (may redact) and one with writer access (may not)."""
    names = {"admin": unique("es_admin"), "writer": unique("es_writer")}
    with admin_connect(database) as conn:
        for access, name in names.items():
            conn.execute(f'CREATE ROLE "{name}" LOGIN')
            conn.execute("SELECT eventstore.grant_access(%s, %s)", (name, access))
    yield names
    with admin_connect(database) as conn:
        for name in names.values():
            conn.execute(f'DROP OWNED BY "{name}"')
            conn.execute(f'DROP ROLE "{name}"')


def redact(conn, event_id, reason="gdpr request"):
    return conn.execute("SELECT eventstore.redact_event(%s::uuid, %s) AS r", (event_id, reason)).fetchone()["r"]


def redact_subject(conn, path, value, reason="gdpr request"):
    return conn.execute("SELECT eventstore.redact_subject(%s, %s, %s) AS n", (path, value, reason)).fetchone()["n"]


def redactions(conn, tenant):
    return conn.execute("SELECT * FROM eventstore.redactions WHERE tenant_id = %s ORDER BY redaction_id",
                        (tenant,)).fetchall()


def test_redact_event_erases_the_payload_and_keeps_the_rest(connect, roles, tenant):
    conn = connect(tenant=tenant)
    define_aggregate(conn, "customer", {"kind": "customer"}, snapshot_every=2)
    correlation = str(uuid.uuid4())
    append(conn, "customer", "c-1", "Registered", {"customer": {"email": "x@y", "name": "X"}},
           metadata={"actor": "signup", "correlation_id": correlation, "ip": "10.0.0.1"})
    append(conn, "customer", "c-1", "Moved", {"city": "Oslo"})
    append(conn, "customer", "c-1", "Renamed", {"customer": {"name": "Y"}})
    assert [r["version"] for r in snapshot_rows(conn, tenant, "customer", "c-1")] == [2]
    before = stored_events(conn, tenant, "customer", "c-1")

    admin = connect(user=roles["admin"], tenant=tenant)
    assert redact(admin, before[0]["event_id"], "erasure request #17") is True

    after = stored_events(conn, tenant, "customer", "c-1")
    assert after[0]["payload"] == REDACTED and after[0]["redacted_at"] is not None
    for column in before[0]:
        if column not in ("payload", "redacted_at"):
            assert after[0][column] == before[0][column], column
    assert after[0]["metadata"]["ip"] == "10.0.0.1" and after[0]["actor"] == "signup"
    assert after[1:] == before[1:], "the other events are untouched"
    read = read_stream(admin, "customer", "c-1")
    assert (read[0]["payload"], read[0]["event_id"], read[0]["redacted_at"]) == (
        REDACTED, before[0]["event_id"], after[0]["redacted_at"])

    (audit,) = redactions(conn, tenant)
    assert {k: audit[k] for k in ("tenant_id", "event_id", "aggregate_type", "aggregate_id", "reason",
                                   "redacted_by", "jwt_sub")} == {
        "tenant_id": tenant, "event_id": before[0]["event_id"], "aggregate_type": "customer",
        "aggregate_id": "c-1", "reason": "erasure request #17", "redacted_by": roles["admin"], "jwt_sub": None}
    assert audit["redacted_at"] == after[0]["redacted_at"]

    # the snapshots are gone, the state is recomputed from the redacted log
    assert snapshot_rows(conn, tenant, "customer", "c-1") == []
    row = get_state(conn, "customer", "c-1")
    assert (row["version"], row["snapshot_version"]) == (3, None)
    assert row["state"] == {"kind": "customer", "redacted": True, "city": "Oslo", "customer": {"name": "Y"}}
    assert get_state(conn, "customer", "c-1", at_version=1)["state"] == {"kind": "customer", "redacted": True}

    # again: nothing to do
    assert redact(admin, before[0]["event_id"], "again") is False
    assert len(redactions(conn, tenant)) == 1
    # later snapshots are made from the redacted log
    append(conn, "customer", "c-1", "Moved", {"city": "Bergen"})
    assert [(r["version"], r["state"]) for r in snapshot_rows(conn, tenant, "customer", "c-1")] == [
        (4, {"kind": "customer", "redacted": True, "city": "Bergen", "customer": {"name": "Y"}})]


def test_redaction_records_the_jwt_subject(connect, tenant):
    conn = connect(tenant=tenant)
    event_id = append(conn, "customer", "c-1", "Registered", {"email": "x@y"})["event_id"]
    conn.execute("BEGIN")
    conn.execute("SELECT set_config('request.jwt.claims', %s, true)", (json.dumps({"sub": "user-42"}),))
    assert redact(conn, event_id)
    conn.execute("COMMIT")
    (audit,) = redactions(conn, tenant)
    assert (audit["redacted_by"], audit["jwt_sub"]) == ("postgres", "user-42")


def test_redaction_errors(connect, roles, tenant):
    conn = connect(tenant=tenant)
    event_id = append(conn, "customer", "c-1", "Registered", {"email": "x@y"})["event_id"]
    missing = uuid.uuid4()
    err = expect_error("P0002", conn, "SELECT eventstore.redact_event(%s, 'gdpr')", (missing,))
    assert err.diag.message_primary == f"event {missing} does not exist"
    for reason in ("", "   ", None):
        err = expect_error("22023", conn, "SELECT eventstore.redact_event(%s, %s)", (event_id, reason))
        assert err.diag.message_primary == "reason must not be empty"
        expect_error("22023", conn, "SELECT eventstore.redact_subject('email', 'x@y', %s)", (reason,))
    expect_error("22023", conn, "SELECT eventstore.redact_event(NULL, 'gdpr')")
    for path in ("", "a..b", "$.", None):
        expect_error("22023", conn, "SELECT eventstore.redact_subject(%s, 'x@y', 'gdpr')", (path,))
    expect_error("22023", conn, "SELECT eventstore.redact_subject('email', NULL, 'gdpr')")
    # another tenant's event does not exist for this one
    other = connect(tenant=unique("other"))
    expect_error("P0002", other, "SELECT eventstore.redact_event(%s, 'gdpr')", (event_id,))
    assert redact_subject(other, "email", "x@y") == 0
    # a writer may not redact
    writer = connect(user=roles["writer"], tenant=tenant)
    expect_error("42501", writer, "SELECT eventstore.redact_event(%s, 'gdpr')", (event_id,))
    expect_error("42501", writer, "SELECT eventstore.redact_subject('email', 'x@y', 'gdpr')")
    assert stored_events(conn, tenant, "customer", "c-1")[0]["payload"] == {"email": "x@y"}
    assert redactions(conn, tenant) == []


def test_redact_subject_erases_every_event_of_the_tenant_holding_the_value(connect, roles, tenant):
    conn = connect(tenant=tenant)
    other_tenant = unique("other")
    other = connect(tenant=other_tenant)
    define_aggregate(conn, "order", {}, snapshot_every=1)
    append(conn, "customer", "c-1", "Registered", {"customer": {"email": "x@y", "name": "X"}})
    append(conn, "customer", "c-1", "Renamed", {"customer": {"name": "Z"}})
    append(conn, "order", "o-1", "Placed", {"customer": {"email": "x@y"}, "total": 5})
    append(conn, "order", "o-2", "Placed", {"customer": {"email": "someone@else"}, "total": 6})
    append(conn, "order", "o-3", "Placed", {"email": "x@y"})  # the value, at another path
    append(conn, "order", "o-4", "Placed", {"customer": {"email": ["x@y"]}})  # not a string there
    append(other, "customer", "c-1", "Registered", {"customer": {"email": "x@y"}})
    assert [r["version"] for r in snapshot_rows(conn, tenant, "order", "o-1")] == [1]

    admin = connect(user=roles["admin"], tenant=tenant)
    assert redact_subject(admin, "customer.email", "x@y", "erase x") == 2
    payloads = {(e["aggregate_type"], e["aggregate_id"], e["aggregate_version"]): e["payload"]
                for e in conn.execute("SELECT * FROM eventstore.events WHERE tenant_id = %s", (tenant,)).fetchall()}
    assert payloads == {
        ("customer", "c-1", 1): REDACTED,
        ("customer", "c-1", 2): {"customer": {"name": "Z"}},
        ("order", "o-1", 1): REDACTED,
        ("order", "o-2", 1): {"customer": {"email": "someone@else"}, "total": 6},
        ("order", "o-3", 1): {"email": "x@y"},
        ("order", "o-4", 1): {"customer": {"email": ["x@y"]}},
    }
    assert stored_events(conn, other_tenant, "customer", "c-1")[0]["payload"] == {"customer": {"email": "x@y"}}
    assert [(r["aggregate_type"], r["aggregate_id"], r["reason"], r["redacted_by"]) for r in redactions(conn, tenant)] == [
        ("customer", "c-1", "erase x", roles["admin"]), ("order", "o-1", "erase x", roles["admin"])]
    assert redactions(conn, other_tenant) == []
    assert snapshot_rows(conn, tenant, "order", "o-1") == []
    assert get_state(conn, "order", "o-1")["state"] == REDACTED
    # nothing left to erase; a "$." prefix is accepted
    assert redact_subject(admin, "$.customer.email", "x@y") == 0
    assert redact_subject(admin, "$.email", "x@y") == 1
    assert len(redactions(conn, tenant)) == 3


def test_redact_subject_compares_the_text_of_the_value(connect, tenant):
    conn = connect(tenant=tenant)
    append(conn, "customer", "c-1", "Registered", {"customer": {"id": 42}})
    append(conn, "customer", "c-2", "Registered", {"customer": {"id": "42"}})
    append(conn, "customer", "c-3", "Registered", {"customer": {"id": 42.0}})
    assert redact_subject(conn, "customer.id", "42") == 2
    assert [e["payload"] for e in stored_events(conn, tenant, "customer", "c-3")] == [{"customer": {"id": 42.0}}]


def test_redact_subject_searches_stored_payloads_not_upcast_ones(connect, tenant):
    """As implemented: the path is looked up in the payload as stored. An event written under an
    old schema holds the value at its old path."""
    conn = connect(tenant=tenant)
    append(conn, "customer", "c-1", "Registered", {"customer_email": "x@y"})
    conn.execute("SELECT eventstore.register_upcaster('Registered', 1, 2, %s)",
                 (Jsonb([{"op": "rename", "from": "customer_email", "to": "customer.email"}]),))
    assert read_stream(conn, "customer", "c-1")[0]["payload"] == {"customer": {"email": "x@y"}}
    assert redact_subject(conn, "customer.email", "x@y") == 0
    assert redact_subject(conn, "customer_email", "x@y") == 1
    # a redacted event is not upcast: it keeps its stored schema version
    (event,) = read_stream(conn, "customer", "c-1")
    assert (event["payload"], event["schema_version"]) == (REDACTED, 1)


def test_the_log_stays_append_only(connect, roles, tenant):
    conn = connect(tenant=tenant)
    event_id = append(conn, "customer", "c-1", "Registered", {"email": "x@y"})["event_id"]
    append(conn, "customer", "c-1", "Moved", {"city": "Oslo"})
    for sql in ("UPDATE eventstore.events SET payload = '{}' WHERE tenant_id = %s",
                "DELETE FROM eventstore.events WHERE tenant_id = %s",
                "UPDATE eventstore.events SET redacted_at = now() WHERE tenant_id = %s"):
        expect_error("42501", conn, sql, (tenant,))
    expect_error("42501", conn, "TRUNCATE eventstore.events")
    # not even right after a redaction in the same transaction
    conn.execute("BEGIN")
    assert redact(conn, event_id)
    assert conn.execute("SELECT current_setting('eventstore.redacting') AS s").fetchone()["s"] == "off"
    expect_error("42501", conn, "UPDATE eventstore.events SET payload = '{}' WHERE tenant_id = %s", (tenant,))
    conn.execute("ROLLBACK")
    assert stored_events(conn, tenant, "customer", "c-1")[0]["payload"] == {"email": "x@y"}
    assert redactions(conn, tenant) == [], "the rolled-back redaction left no audit row"

    # an application role can neither set the switch nor write the table
    for role in ("admin", "writer"):
        app = connect(user=roles[role], tenant=tenant)
        expect_error("42501", app, "SET eventstore.redacting = on")
        expect_error("42501", app, "SELECT set_config('eventstore.redacting', 'on', false)")
        expect_error("42501", app, "UPDATE eventstore.events SET payload = '{}'")
        expect_error("42501", app, "DELETE FROM eventstore.events")
    assert [e["payload"] for e in stored_events(conn, tenant, "customer", "c-1")] == [{"email": "x@y"}, {"city": "Oslo"}]


@pytest.mark.parametrize("how", ["create_snapshot", "append"])
def test_a_snapshot_never_brings_redacted_data_back(connect, tenant, how):
    """A transaction that read the log before a redaction committed must not store a snapshot
    of the erased payload afterwards (REPEATABLE READ makes the interleaving deterministic)."""
    conn, slow = connect(tenant=tenant), connect(tenant=tenant)
    define_aggregate(conn, "person", {}, snapshot_every=2)
    event_id = append(conn, "person", "p-1", "Registered", {"email": "secret@x"})["event_id"]
    slow.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    slow.execute("SELECT count(*) FROM eventstore.events")  # its snapshot is taken
    assert redact(conn, event_id)
    try:
        if how == "append":  # crosses 2: an automatic snapshot
            append(slow, "person", "p-1", "Moved", {"city": "Oslo"})
        else:
            create_snapshot(slow, "person", "p-1")
        slow.execute("COMMIT")
    except psycopg.Error:  # refusing is a fine answer too
        slow.execute("ROLLBACK")
    for r in snapshot_rows(conn, tenant, "person", "p-1"):
        assert "email" not in r["state"], f"snapshot {r['version']} holds erased data: {r['state']}"
    assert "email" not in get_state(conn, "person", "p-1")["state"]
