"""Idempotent re-sends by event_id and validation of appends."""

import json
import uuid

import pytest

from conftest import (append, append_events, backend_pid, expect_error, new_events, read_stream, start,
                      stream_version, wait_until, waiting_on_lock)

APPENDED = ("event_id", "aggregate_version", "global_position", "recorded_at")


def key(row):
    return tuple(row[k] for k in APPENDED)


def counts(conn, tenant):
    """What is stored for a tenant: events, streams, the sum of stream versions."""
    return conn.execute(
        "SELECT (SELECT count(*) FROM eventstore.events WHERE tenant_id = %(t)s) AS events,"
        "       (SELECT count(*) FROM eventstore.streams WHERE tenant_id = %(t)s) AS streams,"
        "       (SELECT coalesce(sum(version), 0) FROM eventstore.streams WHERE tenant_id = %(t)s) AS versions",
        {"t": tenant}).fetchone()


def next_position_follows(conn, last_position):
    """The next append takes the very next position: nothing in between drew one."""
    probe = append(conn, "probe", str(uuid.uuid4()), "Probe")
    assert probe["global_position"] == last_position + 1
    return probe["global_position"]


class TestIdempotency:
    def test_append_event_resend_returns_the_original(self, connect, tenant):
        conn = connect(tenant=tenant)
        eid = uuid.uuid4()
        original = append(conn, "order", "1", "Placed", {"n": 1}, expected_version=0, event_id=eid)
        assert original["event_id"] == eid and original["aggregate_version"] == 1
        before = counts(conn, tenant)

        for expected in (0, None):
            again = append(conn, "order", "1", "Placed", {"n": 1}, expected_version=expected, event_id=eid)
            assert key(again) == key(original)
        assert counts(conn, tenant) == before

        # the stream moves on; a late re-send of the first event still gets its original row
        second = append(conn, "order", "1", "Paid", expected_version=1)
        for expected in (0, None):
            assert key(append(conn, "order", "1", "Placed", {"n": 1}, expected_version=expected,
                              event_id=eid)) == key(original)
        assert stream_version(conn, "order", "1") == 2
        assert [r["event_id"] for r in read_stream(conn, "order", "1")] == [eid, second["event_id"]]
        next_position_follows(conn, second["global_position"])

    def test_append_events_resend_returns_the_original_rows(self, connect, tenant):
        conn = connect(tenant=tenant)
        batch = new_events(3, "Placed", with_ids=True)
        original = append_events(conn, "order", "2", batch, expected_version=0)
        assert [r["aggregate_version"] for r in original] == [1, 2, 3]
        assert [str(r["event_id"]) for r in original] == [e["event_id"] for e in batch]
        before = counts(conn, tenant)

        for expected in (0, None):
            again = append_events(conn, "order", "2", batch, expected_version=expected)
            assert [key(r) for r in again] == [key(r) for r in original]
        later = append_events(conn, "order", "2", new_events(2), expected_version=3)
        again = append_events(conn, "order", "2", batch, expected_version=0)
        assert [key(r) for r in again] == [key(r) for r in original]
        assert counts(conn, tenant)["events"] == before["events"] + 2
        assert stream_version(conn, "order", "2") == 5
        next_position_follows(conn, later[-1]["global_position"])

    def test_event_id_stored_in_another_stream_is_a_duplicate(self, connect, tenant):
        conn = connect(tenant=tenant)
        eid = uuid.uuid4()
        stored = append(conn, "order", "3", event_id=eid)
        append(conn, "order", "other")
        before = counts(conn, tenant)

        err = expect_error("23505", conn,
                           "SELECT eventstore.append_event('order', 'other', 'E', '{}', event_id => %s)", (eid,))
        assert str(eid) in (err.diag.message_primary + (err.diag.message_detail or ""))
        expect_error("23505", conn,
                     "SELECT eventstore.append_event('order', 'new-one', 'E', '{}', event_id => %s)", (eid,))
        expect_error("23505", conn,
                     "SELECT eventstore.append_event('invoice', '3', 'E', '{}', expected_version => 0, event_id => %s)",
                     (eid,))
        batch = [{"event_type": "E", "payload": {}}, {"event_type": "E", "payload": {}, "event_id": str(eid)}]
        expect_error("23505", conn, "SELECT * FROM eventstore.append_events('order', 'other', %s)",
                     (json.dumps(batch),))
        assert counts(conn, tenant) == before
        assert stream_version(conn, "order", "new-one") == 0
        next_position_follows(conn, stored["global_position"] + 1)

    def test_partly_overlapping_batch_is_a_duplicate(self, connect, tenant):
        conn = connect(tenant=tenant)
        batch = new_events(3, with_ids=True)
        original = append_events(conn, "order", "4", batch)
        before = counts(conn, tenant)
        fresh = new_events(1, with_ids=True)
        for overlapping in (batch + fresh,           # the original plus one more
                            fresh + batch,           # one more in front
                            batch[:2] + fresh,       # a prefix and a new one
                            [batch[0], batch[2]],    # not at the positions they are stored at
                            [batch[1], batch[0]]):   # out of order
            expect_error("23505", conn, "SELECT * FROM eventstore.append_events('order', '4', %s)",
                         (json.dumps(overlapping),))
        # the same id twice in one batch
        twice = [dict(fresh[0]), dict(fresh[0])]
        expect_error("23505", conn, "SELECT * FROM eventstore.append_events('order', '4', %s)", (json.dumps(twice),))
        assert counts(conn, tenant) == before
        next_position_follows(conn, original[-1]["global_position"])

    @pytest.mark.parametrize("with_expected", [True, False], ids=["expected-version", "any-version"])
    @pytest.mark.parametrize("stream_exists", [True, False], ids=["existing-stream", "new-stream"])
    def test_concurrent_resend_while_the_original_is_in_flight(self, connect, tenant, stream_exists,
                                                               with_expected):
        """A client retries while its first attempt is still uncommitted: once the first commits,
        the retry gets the original row, not an error, not a second event and no gap."""
        conn = connect(tenant=tenant)
        observer = connect()
        if stream_exists:
            append(conn, "order", "5")
        base = 1 if stream_exists else 0
        expected = base if with_expected else None
        first = connect(tenant=tenant, autocommit=False)
        retry = connect(tenant=tenant)
        eid = uuid.uuid4()
        original = append(first, "order", "5", "Placed", expected_version=expected, event_id=eid)
        pid = backend_pid(retry)
        w = start(append, retry, "order", "5", "Placed", expected_version=expected, event_id=eid)
        wait_until(lambda: waiting_on_lock(observer, pid), what="the retry to wait on the first attempt")
        first.commit()
        again = w.join_result()
        assert key(again) == key(original)
        assert stream_version(conn, "order", "5") == base + 1
        assert counts(conn, tenant)["events"] == base + 1
        next_position_follows(conn, original["global_position"])


class TestValidation:
    def assert_invalid(self, conn, sql, params, *words):
        err = expect_error("22023", conn, sql, params)
        text = err.diag.message_primary
        assert not text[0].isupper(), f"message should be lower-case: {text}"
        full = " ".join(filter(None, [text, err.diag.message_detail]))
        for w in words:
            assert w in full, f"{w!r} not in {full!r}"
        return err

    def test_invalid_names_and_payloads(self, connect, tenant):
        conn = connect(tenant=tenant)
        append(conn, "order", "1")
        before = counts(conn, tenant)
        ae = "SELECT eventstore.append_event(%s, %s, %s, %s::jsonb)"
        self.assert_invalid(conn, ae, ("", "1", "E", "{}"), "aggregate_type", "empty")
        self.assert_invalid(conn, ae, ("order", "", "E", "{}"), "aggregate_id", "empty")
        self.assert_invalid(conn, ae, ("order", "1", "", "{}"), "event_type", "empty")
        self.assert_invalid(conn, ae, (None, "1", "E", "{}"), "aggregate_type")
        self.assert_invalid(conn, ae, ("order", None, "E", "{}"), "aggregate_id")
        self.assert_invalid(conn, ae, ("order", "1", None, "{}"), "event_type")
        self.assert_invalid(conn, ae, ("x" * 256, "1", "E", "{}"), "aggregate_type", "too long")
        self.assert_invalid(conn, ae, ("order", "é" * 256, "E", "{}"), "aggregate_id", "too long")
        self.assert_invalid(conn, ae, ("order", "1", "E" * 256, "{}"), "event_type", "too long")
        for payload in ("[1, 2]", '"text"', "42", "null", "true"):
            self.assert_invalid(conn, ae, ("order", "1", "E", payload), "payload", "object")
        self.assert_invalid(conn, ae, ("order", "1", "E", None), "payload")
        self.assert_invalid(conn, "SELECT eventstore.append_event('order', '1', 'E', '{}', %s::jsonb)",
                            ("[]",), "metadata", "object")
        self.assert_invalid(conn, "SELECT eventstore.append_event('order', '1', 'E', '{}', %s::jsonb)",
                            ('{"correlation_id": "not-a-uuid"}',), "correlation_id")
        self.assert_invalid(conn, "SELECT eventstore.append_event('order', '1', 'E', '{}', %s::jsonb)",
                            ('{"occurred_at": "yesterday"}',), "occurred_at")
        self.assert_invalid(conn, "SELECT * FROM eventstore.read_stream('', '1')", None, "aggregate_type")
        self.assert_invalid(conn, "SELECT eventstore.stream_version('order', %s)", ("y" * 256,), "aggregate_id")
        assert counts(conn, tenant) == before
        # the limits themselves are fine: 255 characters, in characters not bytes
        row = append(conn, "t" * 255, "é" * 255, "E" * 255)
        assert row["aggregate_version"] == 1
        assert stream_version(conn, "t" * 255, "é" * 255) == 1

    def test_bad_batches_write_nothing(self, connect, tenant):
        conn = connect(tenant=tenant)
        last = append(conn, "order", "1")
        before = counts(conn, tenant)
        good = {"event_type": "E", "payload": {}}
        sql = "SELECT * FROM eventstore.append_events('order', '1', %s::jsonb)"
        cases = [
            ({"event_type": "E", "payload": {}}, ["events", "array"]),
            ("not json array", ["events", "array"]),
            ([], ["events", "empty"]),
            ([good, {"event_type": "E", "payload": [1]}], ["events[1]", "payload", "object"]),
            ([good, {"event_type": "E", "payload": {}, "typo": 1}], ["events[1]", "unknown key", "typo"]),
            ([good, good, {"event_type": "E", "payload": {}, "event_id": "nope"}], ["events[2]", "event_id"]),
            ([good, {"payload": {}}], ["events[1]", "event_type"]),
            ([good, {"event_type": "", "payload": {}}], ["events[1]", "event_type", "empty"]),
            ([good, 7], ["events[1]", "object"]),
            ([good, {"event_type": "E", "payload": {}, "metadata": "x"}], ["events[1]", "metadata", "object"]),
            ([good, {"event_type": "E", "payload": {}, "schema_version": 0}], ["events[1]", "schema_version"]),
        ]
        for events, words in cases:
            self.assert_invalid(conn, sql, (json.dumps(events),), *words)
        self.assert_invalid(conn, "SELECT * FROM eventstore.append_events('order', '1', NULL)", None, "events")
        assert counts(conn, tenant) == before
        assert stream_version(conn, "order", "1") == 1
        next_position_follows(conn, last["global_position"])

    def test_batch_size_limit(self, connect, tenant):
        conn = connect(tenant=tenant)
        err = self.assert_invalid(conn, "SELECT count(*) FROM eventstore.append_events('order', 'big', %s::jsonb)",
                                  (json.dumps(new_events(10_001)),), "too many")
        assert "10000" in (err.diag.message_detail or "").replace(",", "") + err.diag.message_primary.replace(",", "")
        assert counts(conn, tenant)["events"] == 0
        rows = append_events(conn, "order", "big", new_events(10_000), expected_version=0)
        assert [r["aggregate_version"] for r in rows] == list(range(1, 10_001))
        positions = [r["global_position"] for r in rows]
        assert positions == list(range(positions[0], positions[0] + 10_000))
        assert stream_version(conn, "order", "big") == 10_000

    def test_batch_columns_are_stored(self, connect, tenant):
        conn = connect(tenant=tenant)
        corr, cause, eid = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        batch = [
            {"event_type": "Placed", "payload": {"a": 1}, "schema_version": 2, "event_id": str(eid),
             "metadata": {"correlation_id": str(corr), "causation_id": str(cause), "actor": "ann",
                          "occurred_at": "2024-05-01T12:30:00Z", "extra": True}},
            {"event_type": "Paid", "payload": {"b": [1, 2]}},
        ]
        rows = append_events(conn, "order", "cols", batch, expected_version=0)
        stored = read_stream(conn, "order", "cols")
        assert [r["event_id"] for r in stored] == [r["event_id"] for r in rows]
        first, second = stored
        assert first["event_id"] == eid
        assert (first["event_type"], first["payload"], first["schema_version"]) == ("Placed", {"a": 1}, 2)
        assert (first["correlation_id"], first["causation_id"], first["actor"]) == (corr, cause, "ann")
        assert first["metadata"]["extra"] is True
        assert first["occurred_at"].isoformat() == "2024-05-01T12:30:00+00:00"
        assert (second["event_type"], second["payload"], second["schema_version"], second["metadata"]) == (
            "Paid", {"b": [1, 2]}, 1, {})
        assert second["occurred_at"] == second["recorded_at"]
        assert first["tenant_id"] == tenant and first["transaction_id"] == second["transaction_id"]

    def test_append_event_columns_are_stored(self, connect, tenant):
        conn = connect(tenant=tenant)
        corr, cause, eid = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        meta = {"correlation_id": str(corr), "causation_id": str(cause), "actor": "bob",
                "occurred_at": "2024-02-29T23:59:59.250+02:00", "trace": [1]}
        row = append(conn, "order", "one", "Placed", {"total": 9.5}, meta, expected_version=0, event_id=eid)
        assert row["event_id"] == eid
        (stored,) = read_stream(conn, "order", "one")
        assert (stored["event_id"], stored["global_position"], stored["recorded_at"]) == (
            eid, row["global_position"], row["recorded_at"])
        assert (stored["event_type"], stored["payload"], stored["metadata"], stored["schema_version"]) == (
            "Placed", {"total": 9.5}, meta, 1)
        assert (stored["correlation_id"], stored["causation_id"], stored["actor"]) == (corr, cause, "bob")
        assert stored["occurred_at"].isoformat() == "2024-02-29T21:59:59.250000+00:00"
        assert stored["redacted_at"] is None

    def test_read_stream_paging_and_bounds(self, connect, tenant):
        conn = connect(tenant=tenant)
        append_events(conn, "order", "page", new_events(7))
        assert [r["aggregate_version"] for r in read_stream(conn, "order", "page", max_count=3)] == [1, 2, 3]
        assert [r["aggregate_version"] for r in read_stream(conn, "order", "page", 3, 3)] == [3, 4, 5]
        assert [r["aggregate_version"] for r in read_stream(conn, "order", "page", 6)] == [6, 7]
        assert read_stream(conn, "order", "page", 8) == []
        assert read_stream(conn, "order", "missing") == []
        self.assert_invalid(conn, "SELECT * FROM eventstore.read_stream('order', 'page', 0)", None, "from_version")
        for bad in (0, -5):
            self.assert_invalid(conn, "SELECT * FROM eventstore.read_stream('order', 'page', 1, %s)", (bad,),
                                "max_count")
