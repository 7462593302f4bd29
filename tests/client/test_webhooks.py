"""Webhooks in the Standard Webhooks format, delivered by the preloaded
background worker to a real HTTP receiver on 127.0.0.1.

The cluster must allow that address (`eventstore.webhook_allowed_hosts = '127.0.0.1'`) and, to
keep the timeout tests short, `eventstore.webhook_timeout = 2000`; scripts/test.sh starts it so.
Every delivery the receiver gets is checked with the Standard Webhooks reference library, not
only with our own code. Endpoints use short retry schedules (seconds) so that retries, dead
deliveries and Retry-After are seen within a few seconds; each test disables its endpoints when
it ends so that the next one has the worker to itself.
"""

import base64
import json
import os
import random
import re
import signal
import socket
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from conftest import (CLUSTER, HOST, admin_connect, append, append_events, connect_retrying, expect_error,
                      unique, wait_for_worker, wait_until)

pytestmark = pytest.mark.skipif(
    HOST not in ("127.0.0.1", "localhost", "::1"),
    reason="the server must reach the test's HTTP receiver on 127.0.0.1 (and the worker is signalled)")

# how long the deliveries of one test may take to arrive (s); generous, never waited out
ARRIVAL_TIMEOUT = 20
# response bodies are kept in the attempt log up to 20 kB
MAX_RESPONSE_BODY = 20 * 1024
FAST_SCHEDULE = "{0,1,1,1}"  # four attempts, about a second apart (±20% jitter), then dead
# after the worker is killed, the cluster restarts and a new worker goes on within this (s)
RECOVERY_TIMEOUT = 30
BODY_KEYS = {"type", "timestamp", "data"}
DATA_KEYS = {"event_id", "aggregate_type", "aggregate_id", "aggregate_version", "global_position",
             "payload", "metadata"}
SIGNATURE = re.compile(r"^v1,[A-Za-z0-9+/]+={0,2}$")


@pytest.fixture(scope="module")
def database(worker_database):
    """The database the worker serves (conftest's worker_database): `connect` opens connections
    to it."""
    return worker_database


# --- the HTTP receiver ---------------------------------------------------------------------


class Reply:
    """What the receiver answers: a status, headers, a body and an optional delay first."""

    def __init__(self, status=200, body=b"ok", headers=None, delay=0.0):
        self.status, self.headers, self.delay = status, dict(headers or {}), delay
        self.body = body.encode() if isinstance(body, str) else body


class Request:
    def __init__(self, method, path, headers, raw_headers, body):
        self.method, self.path, self.headers, self.raw_headers, self.body = method, path, headers, raw_headers, body
        self.at = time.time()
        self.status = None

    @property
    def json(self):
        return json.loads(self.body)

    @property
    def event_id(self):
        return uuid.UUID(self.json["data"]["event_id"])

    @property
    def position(self):
        return self.json["data"]["global_position"]


def always(status=200, body=b"ok", headers=None, delay=0.0):
    return lambda req, n: Reply(status, body, headers, delay)


def first_then(count, failure, success=None):
    """`failure` (a Reply) for the first `count` calls of the path, then `success` (200)."""
    return lambda req, n: failure if n < count else (success or Reply())


class Receiver:
    """A real HTTP server on 127.0.0.1 (ephemeral port) that records method, path, headers and
    raw body of every request and answers per path with a programmable responder
    `fn(request, n)` (n: earlier requests to that path). stop() closes the listening socket (the
    next calls are refused); start() listens again on the same port. Delays end at stop()."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = []
        self.routes = {}
        self.port = None
        self.server = None
        self.thread = None
        self.stopping = threading.Event()

    def start(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection: stop() means refused

            def do_POST(self):
                receiver._handle(self)

            do_GET = do_PUT = do_POST

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port or 0), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self.stopping.clear()
        self.server = server
        self.thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self):
        if self.server is None:
            return
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
        self.server = None

    def url(self, path="/hook"):
        return f"http://127.0.0.1:{self.port}{path}"

    def route(self, path, responder):
        with self.lock:
            self.routes[path] = responder

    def _handle(self, h):
        try:
            length = int(h.headers.get("content-length") or 0)
            body = h.rfile.read(length) if length else b""
            req = Request(h.command, h.path, {k.lower(): v for k, v in h.headers.items()}, h.headers.items(), body)
            with self.lock:
                n = sum(1 for r in self.requests if r.path == req.path)
                self.requests.append(req)
                responder = self.routes.get(req.path, always())
            reply = responder(req, n)
            req.status = reply.status
            if reply.delay:
                self.stopping.wait(reply.delay)
            h.send_response(reply.status)
            for k, v in reply.headers.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(reply.body)))
            h.end_headers()
            h.wfile.write(reply.body)
        except OSError:
            pass  # the caller gave up (timeout)

    def received(self, path="/hook"):
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def wait_for(self, count, path="/hook", timeout=ARRIVAL_TIMEOUT):
        """Waits until `path` got at least `count` requests; returns them all."""
        return wait_until(lambda: (lambda got: got if len(got) >= count else None)(self.received(path)),
                          timeout=timeout, interval=0.02, what=f"{count} requests to {path}")


@pytest.fixture
def receiver():
    r = Receiver()
    r.start()
    try:
        yield r
    finally:
        r.stop()


# --- endpoints and deliveries --------------------------------------------------------------

CREATED = []


@pytest.fixture(autouse=True)
def disable_endpoints_afterwards(database):
    """Disables the endpoints a test created when it ends, so that their retries do not keep
    the worker busy during later tests."""
    yield
    if CREATED:
        with admin_connect(database) as conn:
            conn.execute("UPDATE eventstore.webhook_endpoints SET enabled = false, disabled_reason = 'test over'"
                         " WHERE endpoint_id = ANY (%s)", (list(CREATED),))
        CREATED.clear()


def create_endpoint(conn, url, event_types=None, aggregate_types=None, description=None, retry_schedule=None,
                    rate_limit_per_second=None):
    """create_webhook_endpoint; returns (endpoint_id, secret)."""
    row = conn.execute(
        "SELECT * FROM eventstore.create_webhook_endpoint(%s, %s::text[], %s::text[], %s, %s::int[], %s::int)",
        (url, event_types, aggregate_types, description, retry_schedule, rate_limit_per_second)).fetchone()
    CREATED.append(row["endpoint_id"])
    return row["endpoint_id"], row["secret"]


def endpoint_row(conn, endpoint_id):
    return conn.execute("SELECT * FROM eventstore.webhook_endpoints WHERE endpoint_id = %s",
                        (endpoint_id,)).fetchone()


def deliveries(conn, endpoint_id):
    """The endpoint's deliveries in event order."""
    return conn.execute("SELECT * FROM eventstore.webhook_deliveries WHERE endpoint_id = %s"
                        " ORDER BY transaction_id, global_position", (endpoint_id,)).fetchall()


def delivery_of(conn, endpoint_id, event_id):
    return conn.execute("SELECT * FROM eventstore.webhook_deliveries WHERE endpoint_id = %s AND event_id = %s",
                        (endpoint_id, event_id)).fetchone()


def attempts(conn, delivery_id):
    return conn.execute("SELECT * FROM eventstore.webhook_attempts WHERE delivery_id = %s ORDER BY attempt_id",
                        (delivery_id,)).fetchall()


def wait_settled(conn, endpoint_id, count, status="succeeded", timeout=ARRIVAL_TIMEOUT):
    """Waits until the endpoint has `count` deliveries, all in `status`; returns them."""
    def settled():
        rows = deliveries(conn, endpoint_id)
        return rows if len(rows) == count and all(r["status"] == status for r in rows) else None
    return wait_until(settled, timeout=timeout, interval=0.05,
                      what=f"{count} deliveries of endpoint {endpoint_id} to be {status}")


def sign(conn, secret, msg_id, ts, body):
    return conn.execute("SELECT eventstore.sign_webhook(%s, %s, %s::bigint, %s) AS s",
                        (secret, msg_id, ts, body)).fetchone()["s"]


def verify(req, secret):
    """Checks one request with the Standard Webhooks reference library; returns the body."""
    return Webhook(secret).verify(req.body, req.headers)


def check_message(req, secret):
    """The Standard Webhooks request: a POST with exactly these headers, signed with `secret`
    (one signature); returns the parsed body."""
    assert req.method == "POST"
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature", "content-type"):
        assert [k for k, _ in req.raw_headers if k.lower() == name] != [], f"no {name} header"
        assert len([k for k, _ in req.raw_headers if k.lower() == name]) == 1, f"{name} sent twice"
    assert sorted(k for k in req.headers if k.startswith("webhook-")) == \
        ["webhook-id", "webhook-signature", "webhook-timestamp"]
    assert req.headers["content-type"] == "application/json"
    assert req.headers["webhook-id"].startswith("msg_") and len(req.headers["webhook-id"]) > 4
    assert re.fullmatch(r"[0-9]+", req.headers["webhook-timestamp"])
    # fresh: the time of this attempt (whole seconds)
    assert abs(int(req.headers["webhook-timestamp"]) - req.at) < 3
    signature = req.headers["webhook-signature"]
    assert " " not in signature and SIGNATURE.match(signature)
    assert len(base64.b64decode(signature[3:])) == 32
    body = verify(req, secret)
    assert body == json.loads(req.body)
    return body


def stored_event(conn, event_id):
    return conn.execute("SELECT * FROM eventstore.events WHERE event_id = %s", (event_id,)).fetchone()


def rfc3339(ts):
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def check_body(conn, body, event_id):
    """The delivery body (type, timestamp, data: the event's columns), built from the stored event."""
    e = stored_event(conn, event_id)
    assert set(body) == BODY_KEYS and set(body["data"]) == DATA_KEYS
    assert body["type"] == e["event_type"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", body["timestamp"])
    assert rfc3339(body["timestamp"]) == e["recorded_at"]
    assert body["data"] == {
        "event_id": str(e["event_id"]), "aggregate_type": e["aggregate_type"], "aggregate_id": e["aggregate_id"],
        "aggregate_version": e["aggregate_version"], "global_position": e["global_position"],
        "payload": e["payload"], "metadata": e["metadata"]}


def stats(conn, since=None):
    if since is None:
        return conn.execute("SELECT eventstore.get_webhook_delivery_stats() AS s").fetchone()["s"]
    return conn.execute("SELECT eventstore.get_webhook_delivery_stats(%s) AS s", (since,)).fetchone()["s"]


def closed_port():
    """A port on 127.0.0.1 nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- signatures ----------------------------------------------------------------------------


def test_sign_webhook_known_answer_and_agreement_with_the_reference_library(connect):
    conn = connect()
    # the vector of the Standard Webhooks test suite
    secret, msg_id, ts, body = ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek",
                                1614265330, '{"test": 2432232314}')
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert sign(conn, secret, msg_id, ts, body) == expected
    assert Webhook(secret).sign(msg_id, datetime.fromtimestamp(ts, tz=timezone.utc), body) == expected

    rng = random.Random(20240515)
    alphabet = "abcXYZ019 {}[]\":,.-_\\\n\té€😀'"
    for i in range(200):
        key = bytes(rng.randrange(256) for _ in range(rng.choice([1, 16, 24, 32, 64])))
        secret = ("whsec_" if i % 4 else "") + base64.b64encode(key).decode()
        msg_id = "msg_" + "".join(rng.choice("abcdefXYZ0123456789") for _ in range(rng.randrange(1, 40)))
        ts = rng.randrange(0, 4_000_000_000)
        body = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 300)))
        ours = sign(conn, secret, msg_id, ts, body)
        assert ours == Webhook(secret).sign(msg_id, datetime.fromtimestamp(ts, tz=timezone.utc), body), \
            (secret, msg_id, ts, body)

    expect_error("22023", conn, "SELECT eventstore.sign_webhook('whsec_!!!', 'msg_1', 1, '{}')")
    expect_error("22023", conn, "SELECT eventstore.sign_webhook('whsec_', 'msg_1', 1, '{}')")
    assert conn.execute("SELECT eventstore.sign_webhook(NULL, 'msg_1', 1, '{}') AS s").fetchone()["s"] is None


# --- one delivery, its headers and body ----------------------------------------------------


def test_delivery_headers_body_and_signature(connect, tenant, receiver):
    conn = connect(tenant=tenant)
    endpoint_id, secret = create_endpoint(conn, receiver.url(), description="all events")
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:], validate=True)) == 24
    assert endpoint_row(conn, endpoint_id)["description"] == "all events"

    e1 = append(conn, "order", "o-1", "OrderPlaced", {"total": 12.5, "items": ["a", "b"], "note": "é €"},
                metadata={"correlation_id": str(uuid.uuid4()), "source": "test"})
    e2, e3 = append_events(conn, "invoice", "i-1", [{"event_type": "InvoiceIssued", "payload": {"n": 1}},
                                                   {"event_type": "InvoicePaid", "payload": {"n": 2}}])
    got = receiver.wait_for(3)
    rows = wait_settled(conn, endpoint_id, 3)
    assert [r.event_id for r in got] == [e1["event_id"], e2["event_id"], e3["event_id"]]
    for req, row in zip(got, rows):
        body = check_message(req, secret)
        check_body(conn, body, row["event_id"])
        # the body is the text frozen at queue time, byte for byte; the id is the delivery's
        assert req.body.decode() == row["body"]
        assert req.headers["webhook-id"] == row["message_id"]
        assert (row["status"], row["attempts"], row["last_status_code"]) == ("succeeded", 1, 200)
        assert row["delivered_at"] is not None and row["tenant_id"] == tenant and row["event_type"] == body["type"]
        [a] = attempts(conn, row["delivery_id"])
        assert (a["attempt"], a["status_code"], a["response_body"], a["error"]) == (1, 200, "ok", None)
        assert a["endpoint_id"] == endpoint_id and a["duration_ms"] >= 0
    assert len({r.headers["webhook-id"] for r in got}) == 3
    assert got[0].json["data"]["payload"] == {"total": 12.5, "items": ["a", "b"], "note": "é €"}
    assert got[0].json["data"]["metadata"]["source"] == "test"
    assert [r.json["type"] for r in got] == ["OrderPlaced", "InvoiceIssued", "InvoicePaid"]


def test_the_body_of_one_appended_event_is_the_text_sql_queueing_writes(connect, tenant, receiver):
    """One event appended alone gets its body written in Rust (src/webhooks/body.rs); a stored
    event queued with queue_event_for_webhooks gets it from jsonb_build_object in SQL. Both
    must be the same text, byte for byte, also for names that need escaping."""
    conn = connect(tenant=tenant)
    first_id, _ = create_endpoint(conn, receiver.url("/first"))
    ids = ['plain', 'quote " backslash \\ slash /', 'nl \n tab \t cr \r bs \b ff \f bell \x07 \x01 \x1f del \x7f',
           'é € ✓ 𝄞', '{"looks": "like json"}']
    for i, aggregate_id in enumerate(ids):
        append(conn, "order", aggregate_id, "Placed",
               {"n": i, "nested": {"a": [1, 2.50, None, True], "s": "x\ny"}, "big": 10 ** 30},
               metadata={"correlation_id": str(uuid.uuid4()), "note": "é \x01"} if i % 2 else {})
    conn.execute("SELECT message_store.write_message(gen_random_uuid()::text, 'order-mdb', 'Placed', '{\"m\": 1}', '{\"traceId\": \"t\"}')")
    # and random names and payloads of the same kinds of characters (seeded)
    rng = random.Random(20261201)
    pool = ['a', 'Z', '0', ' ', '"', '\\', '/', '\n', '\t', '\x01', '\x1f', '\x7f', 'é', '€', '✓', '𝄞', '{', '}', ':', ',']
    word = lambda: "".join(rng.choice(pool) for _ in range(rng.randrange(1, 12))).strip() or "x"
    random_events = 25
    for _ in range(random_events):
        append(conn, word(), word(), word(), {word(): word(), "n": rng.random(), word(): {word(): [word(), None]}},
               metadata={word(): word()} if rng.random() < 0.5 else {})
    second_id, _ = create_endpoint(conn, receiver.url("/second"))
    stored = conn.execute("SELECT event_id FROM eventstore.events WHERE tenant_id = %s ORDER BY global_position",
                          (tenant,)).fetchall()
    assert len(stored) == len(ids) + 1 + random_events
    for row in stored:
        assert conn.execute("SELECT eventstore.queue_event_for_webhooks(%s) AS n", (row["event_id"],)).fetchone()["n"] == 1
        rust = delivery_of(conn, first_id, row["event_id"])["body"]
        sql = delivery_of(conn, second_id, row["event_id"])["body"]
        assert rust == sql
        check_body(conn, json.loads(rust), row["event_id"])
    assert [json.loads(delivery_of(conn, first_id, r["event_id"])["body"])["data"]["aggregate_id"]
            for r in stored[:len(ids)]] == ids


def test_filters_by_event_type_and_aggregate_type(connect, tenant, receiver):
    conn = connect(tenant=tenant)
    all_id, s_all = create_endpoint(conn, receiver.url("/all"))
    types_id, s_types = create_endpoint(conn, receiver.url("/types"), event_types=["Placed", "Paid"])
    aggs_id, s_aggs = create_endpoint(conn, receiver.url("/aggs"), aggregate_types=["invoice"])
    both_id, s_both = create_endpoint(conn, receiver.url("/both"), event_types=["Paid"], aggregate_types=["order"])
    off_id, _ = create_endpoint(conn, receiver.url("/off"))
    conn.execute("SELECT eventstore.disable_webhook_endpoint(%s, 'maintenance')", (off_id,))
    off = endpoint_row(conn, off_id)
    assert (off["enabled"], off["disabled_reason"]) == (False, "maintenance") and off["disabled_at"] is not None

    events = [append(conn, "order", "o-1", "Placed"), append(conn, "order", "o-1", "Shipped"),
              append(conn, "order", "o-1", "Paid"), append(conn, "invoice", "i-1", "Issued"),
              append(conn, "invoice", "i-1", "Paid")]
    ids = [e["event_id"] for e in events]
    expected = {"/all": (all_id, s_all, ids), "/types": (types_id, s_types, [ids[0], ids[2], ids[4]]),
                "/aggs": (aggs_id, s_aggs, [ids[3], ids[4]]), "/both": (both_id, s_both, [ids[2]])}
    for path, (endpoint_id, secret, want) in expected.items():
        rows = wait_settled(conn, endpoint_id, len(want))
        assert [r["event_id"] for r in rows] == want, path
        got = receiver.received(path)
        assert [r.event_id for r in got] == want, path
        for req in got:
            check_message(req, secret)
    # a disabled endpoint gets nothing queued, and enabling it again does not queue the past
    assert deliveries(conn, off_id) == []
    conn.execute("SELECT eventstore.enable_webhook_endpoint(%s)", (off_id,))
    off = endpoint_row(conn, off_id)
    assert (off["enabled"], off["disabled_reason"], off["disabled_at"]) == (True, None, None)
    later = append(conn, "order", "o-2", "Placed")
    assert [r["event_id"] for r in wait_settled(conn, off_id, 1)] == [later["event_id"]]
    assert [r.event_id for r in receiver.received("/off")] == [later["event_id"]]


def test_rolled_back_append_queues_nothing_and_queue_event_for_webhooks(connect, tenant, receiver):
    conn = connect(tenant=tenant)
    endpoint_id, secret = create_endpoint(conn, receiver.url("/a"))

    # appended, then rolled back: no delivery row, nothing sent
    with conn.transaction():
        rolled_back = append(conn, "order", "o-1", "Placed", {"n": 0})
        assert len(deliveries(conn, endpoint_id)) == 1  # queued inside the appending transaction
        raise psycopg.Rollback()
    assert deliveries(conn, endpoint_id) == []
    # an open transaction's events are not sent before it commits
    with conn.transaction():
        pending = append(conn, "order", "o-1", "Placed", {"n": 1})
        time.sleep(0.5)
        assert receiver.received("/a") == []
    got = receiver.wait_for(1, "/a")
    assert [r.event_id for r in got] == [pending["event_id"]]
    assert stored_event(conn, rolled_back["event_id"]) is None

    # queue_event_for_webhooks: for the matching enabled endpoints that have not got it yet
    b_id, b_secret = create_endpoint(conn, receiver.url("/b"))
    create_endpoint(conn, receiver.url("/c"), event_types=["Other"])
    q = "SELECT eventstore.queue_event_for_webhooks(%s) AS n"
    assert conn.execute(q, (pending["event_id"],)).fetchone()["n"] == 1
    assert conn.execute(q, (pending["event_id"],)).fetchone()["n"] == 0
    assert [r.event_id for r in receiver.wait_for(1, "/b")] == [pending["event_id"]]
    wait_settled(conn, b_id, 1)
    check_body(conn, check_message(receiver.received("/b")[0], b_secret), pending["event_id"])
    assert conn.execute(q, (pending["event_id"],)).fetchone()["n"] == 0
    assert len(deliveries(conn, endpoint_id)) == 1
    expect_error("P0002", conn, q, (uuid.uuid4(),))
    expect_error("22023", conn, "SELECT eventstore.queue_event_for_webhooks(NULL)")
    # another tenant's event does not exist for this one
    other = connect(tenant=unique("t"))
    foreign = append(other, "order", "o-1", "Placed")
    expect_error("P0002", conn, q, (foreign["event_id"],))
    time.sleep(0.2)
    assert [len(receiver.received(p)) for p in ("/a", "/b", "/c")] == [1, 1, 0]
    check_message(got[0], secret)


# --- failures and retries ------------------------------------------------------------------


def test_retry_after_500_keeps_the_id_and_body_and_signs_again(connect, tenant, receiver):
    conn = connect(tenant=tenant)
    receiver.route("/hook", first_then(2, Reply(500, b"try later")))
    endpoint_id, secret = create_endpoint(conn, receiver.url(), retry_schedule=FAST_SCHEDULE)
    e = append(conn, "order", "o-1", "Placed", {"name": "Alice"})

    first = receiver.wait_for(1)[0]
    got = receiver.wait_for(3)
    [row] = wait_settled(conn, endpoint_id, 1)
    assert [r.status for r in got] == [500, 500, 200]
    assert len({r.headers["webhook-id"] for r in got}) == 1 and got[0].headers["webhook-id"] == row["message_id"]
    assert {r.body for r in got} == {first.body}
    assert got[0].json["data"]["payload"] == {"name": "Alice"}
    for req in got:
        check_message(req, secret)
        ts = int(req.headers["webhook-timestamp"])
        assert req.headers["webhook-signature"] == sign(conn, secret, req.headers["webhook-id"], ts, req.body.decode())
    stamps = [int(r.headers["webhook-timestamp"]) for r in got]
    assert stamps == sorted(stamps) and stamps[0] < stamps[-1]
    by_stamp = {}
    for r in got:
        by_stamp.setdefault(r.headers["webhook-timestamp"], set()).add(r.headers["webhook-signature"])
    assert all(len(s) == 1 for s in by_stamp.values())
    assert len({r.headers["webhook-signature"] for r in got}) == len(by_stamp) >= 2

    assert (row["status"], row["attempts"], row["last_status_code"]) == ("succeeded", 3, 200)
    log = attempts(conn, row["delivery_id"])
    assert [(a["attempt"], a["status_code"], a["response_body"], a["error"]) for a in log] == \
        [(1, 500, "try later", None), (2, 500, "try later", None), (3, 200, "ok", None)]
    assert all(a["duration_ms"] >= 0 for a in log)
    # about a second apart (1 s ± 20%)
    gaps = [(b["attempted_at"] - a["attempted_at"]).total_seconds() for a, b in zip(log, log[1:])]
    assert all(0.75 <= g <= 10 for g in gaps), gaps


def test_a_redaction_erases_the_payload_of_deliveries_not_made_yet(connect, tenant, receiver):
    conn = connect(tenant=tenant)
    receiver.route("/hook", first_then(1, Reply(500, b"try later")))
    endpoint_id, secret = create_endpoint(conn, receiver.url(), retry_schedule="{0,3}")
    e = append(conn, "person", "p-1", "Registered", {"email": "alice@example.com"})
    first = receiver.wait_for(1)[0]
    assert first.json["data"]["payload"] == {"email": "alice@example.com"}
    assert conn.execute("SELECT eventstore.redact_event(%s, 'gdpr') AS r", (e["event_id"],)).fetchone()["r"]
    got = receiver.wait_for(2)
    assert [r.status for r in got] == [500, 200]
    assert got[1].headers["webhook-id"] == first.headers["webhook-id"]
    assert got[1].json["data"]["payload"] == {"redacted": True}
    assert got[1].json["data"]["event_id"] == first.json["data"]["event_id"]
    check_message(got[1], secret)
    [row] = wait_settled(conn, endpoint_id, 1)
    assert row["status"] == "succeeded"


def test_dead_after_the_schedule_then_retried_by_hand(connect, tenant, receiver):
    conn = connect(tenant=tenant)
    big = "".join(f"{i:05d} this response body is 30 kB long\n" for i in range(30 * 1024 // 40)).encode()
    big += b"x" * (30 * 1024 - len(big))
    assert len(big) == 30 * 1024
    failing = [True]
    receiver.route("/hook", lambda req, n: Reply(500, big) if failing[0] else Reply(204, b""))
    endpoint_id, secret = create_endpoint(conn, receiver.url(), retry_schedule=FAST_SCHEDULE)
    e = append(conn, "order", "o-1", "Placed")

    [row] = wait_settled(conn, endpoint_id, 1, status="dead")
    assert (row["attempts"], row["last_status_code"]) == (4, 500)
    assert row["last_error"] and row["delivered_at"] is None
    log = attempts(conn, row["delivery_id"])
    assert [(a["attempt"], a["status_code"]) for a in log] == [(1, 500), (2, 500), (3, 500), (4, 500)]
    for a in log:
        assert a["response_body"] == big[:MAX_RESPONSE_BODY].decode()
        assert len(a["response_body"]) == MAX_RESPONSE_BODY
        assert a["duration_ms"] >= 0
    # the schedule is exhausted: nothing more goes out by itself
    time.sleep(1.5)
    assert len(receiver.received()) == 4

    failing[0] = False
    retry = "SELECT eventstore.retry_webhook_delivery(%s) AS r"
    assert conn.execute(retry, (row["delivery_id"],)).fetchone()["r"] is True
    got = receiver.wait_for(5)
    [row] = wait_settled(conn, endpoint_id, 1)
    assert (row["attempts"], row["last_status_code"]) == (5, 204) and row["delivered_at"] is not None
    assert [r.status for r in got] == [500] * 4 + [204]
    assert len({r.headers["webhook-id"] for r in got}) == 1 and len({r.body for r in got}) == 1
    for req in got:
        check_message(req, secret)
    assert got[4].event_id == e["event_id"]
    assert attempts(conn, row["delivery_id"])[-1]["status_code"] == 204
    # delivered already: nothing to do
    assert conn.execute(retry, (row["delivery_id"],)).fetchone()["r"] is False
    expect_error("P0002", conn, "SELECT eventstore.retry_webhook_delivery(%s)", (uuid.uuid4(),))
    expect_error("22023", conn, "SELECT eventstore.retry_webhook_delivery(NULL)")


def test_410_disables_the_endpoint_and_recover_requeues(connect, tenant, receiver):
    conn = connect(tenant=tenant)
    receiver.route("/hook", first_then(1, Reply(410, b"gone")))
    endpoint_id, secret = create_endpoint(conn, receiver.url(), retry_schedule=FAST_SCHEDULE)
    since = conn.execute("SELECT now() - interval '1 minute' AS t").fetchone()["t"]
    e1 = append(conn, "order", "o-1", "Placed")
    e2 = append(conn, "order", "o-1", "Paid")

    wait_until(lambda: not endpoint_row(conn, endpoint_id)["enabled"], timeout=ARRIVAL_TIMEOUT,
               what="the endpoint to be disabled")
    ep = endpoint_row(conn, endpoint_id)
    assert "410" in ep["disabled_reason"] and ep["disabled_at"] is not None
    d1 = delivery_of(conn, endpoint_id, e1["event_id"])
    assert (d1["attempts"], d1["last_status_code"]) == (1, 410)
    assert [(a["status_code"], a["response_body"]) for a in attempts(conn, d1["delivery_id"])] == [(410, "gone")]
    # a disabled endpoint is not called: its retry (due after ~1 s) does not go out
    time.sleep(1.5)
    assert [r.status for r in receiver.received()] == [410]
    assert delivery_of(conn, endpoint_id, e2["event_id"])["attempts"] == 0

    assert conn.execute("SELECT eventstore.recover_webhook_endpoint(%s, %s) AS n",
                        (endpoint_id, since)).fetchone()["n"] == 1
    ep = endpoint_row(conn, endpoint_id)
    assert (ep["enabled"], ep["disabled_reason"], ep["disabled_at"]) == (True, None, None)
    rows = wait_settled(conn, endpoint_id, 2)
    got = receiver.received()
    assert [(r.event_id, r.status) for r in got] == \
        [(e1["event_id"], 410), (e1["event_id"], 200), (e2["event_id"], 200)]
    for req in got:
        check_message(req, secret)
    assert [r["attempts"] for r in rows] == [2, 1]
    expect_error("P0002", conn, "SELECT eventstore.recover_webhook_endpoint(%s, now())", (uuid.uuid4(),))
    expect_error("22023", conn, "SELECT eventstore.recover_webhook_endpoint(%s, NULL)", (endpoint_id,))


def test_429_and_503_honour_retry_after(connect, tenant, receiver):
    conn = connect(tenant=tenant)
    receiver.route("/429", first_then(1, Reply(429, b"slow down", {"Retry-After": "2"})))
    receiver.route("/503", first_then(1, Reply(503, b"busy", {"Retry-After": "2"})))
    ids = [create_endpoint(conn, receiver.url(p), retry_schedule=FAST_SCHEDULE) for p in ("/429", "/503")]
    append(conn, "order", "o-1", "Placed")
    for (endpoint_id, secret), path, code in zip(ids, ("/429", "/503"), (429, 503)):
        [row] = wait_settled(conn, endpoint_id, 1)
        log = attempts(conn, row["delivery_id"])
        assert [a["status_code"] for a in log] == [code, 200]
        # the schedule says ~1 s; Retry-After asks for 2
        gap = (log[1]["attempted_at"] - log[0]["attempted_at"]).total_seconds()
        assert 1.95 <= gap <= 15, gap
        got = receiver.received(path)
        assert [r.status for r in got] == [code, 200]
        assert got[1].at - got[0].at >= 1.9
        for req in got:
            check_message(req, secret)


def test_redirects_are_not_followed(connect, tenant, receiver):
    conn = connect(tenant=tenant)
    for code in (302, 307):
        receiver.route(f"/{code}", always(code, b"moved", {"Location": receiver.url(f"/target{code}")}))
    ids = {code: create_endpoint(conn, receiver.url(f"/{code}"), retry_schedule="{0}") for code in (302, 307)}
    append(conn, "order", "o-1", "Placed")
    for code, (endpoint_id, secret) in ids.items():
        [row] = wait_settled(conn, endpoint_id, 1, status="dead")
        assert (row["attempts"], row["last_status_code"]) == (1, code)
        assert [a["status_code"] for a in attempts(conn, row["delivery_id"])] == [code]
        assert [r.status for r in receiver.received(f"/{code}")] == [code]
        check_message(receiver.received(f"/{code}")[0], secret)
        assert receiver.received(f"/target{code}") == []


def test_network_errors_and_timeouts_are_status_0(connect, tenant, receiver):
    conn = connect(tenant=tenant)
    timeout_ms = int(conn.execute("SELECT setting FROM pg_settings WHERE name = 'eventstore.webhook_timeout'")
                     .fetchone()["setting"])
    assert timeout_ms <= 5000, "the tests expect eventstore.webhook_timeout = 2000 (scripts/test.sh)"
    receiver.route("/slow", always(200, b"too late", delay=timeout_ms / 1000 + 2))
    refused, _ = create_endpoint(conn, f"http://127.0.0.1:{closed_port()}/hook", retry_schedule="{0}")
    slow, _ = create_endpoint(conn, receiver.url("/slow"), retry_schedule="{0}")
    # a name is checked when it is resolved: localhost is not in the allow list (127.0.0.1 is)
    by_name, _ = create_endpoint(conn, f"http://localhost:{receiver.port}/by-name", retry_schedule="{0}")
    append(conn, "order", "o-1", "Placed")

    for endpoint_id in (refused, slow, by_name):
        [row] = wait_settled(conn, endpoint_id, 1, status="dead")
        assert (row["attempts"], row["last_status_code"]) == (1, 0)
        assert row["last_error"]
        [a] = attempts(conn, row["delivery_id"])
        assert a["status_code"] == 0 and a["error"] and a["response_body"] is None
        assert a["error"] == row["last_error"]
        if endpoint_id == refused:
            assert "refused" in a["error"].lower(), a["error"]
        if endpoint_id == slow:
            assert "timed out" in a["error"].lower(), a["error"]
            assert timeout_ms * 0.9 <= a["duration_ms"] <= timeout_ms + 1500, a["duration_ms"]
    assert len(receiver.received("/slow")) == 1
    assert receiver.received("/by-name") == []
    by_name_error = attempts(conn, deliveries(conn, by_name)[0]["delivery_id"])[0]["error"]
    assert "allowed_hosts" in by_name_error or "private" in by_name_error, by_name_error


def test_rate_limit_spaces_the_calls_to_an_endpoint(connect, tenant, receiver):
    conn = connect(tenant=tenant)
    endpoint_id, secret = create_endpoint(conn, receiver.url(), rate_limit_per_second=4)
    with conn.transaction():
        appended = [append(conn, "order", "o-1", "Happened", {"i": i}) for i in range(5)]
    got = receiver.wait_for(5)
    wait_settled(conn, endpoint_id, 5)
    assert [r.event_id for r in got] == [e["event_id"] for e in appended]
    gaps = [b.at - a.at for a, b in zip(got, got[1:])]
    assert all(g >= 0.2 for g in gaps), gaps  # at most 4 a second: 0.25 s apart
    for req in got:
        check_message(req, secret)


def test_a_slow_rate_limit_holds_up_nothing_else(connect, tenant, receiver):
    """A backlog at one delivery a second is worked off one turn at a time: the worker does not
    wait it out in one round, so another endpoint's deliveries go out meanwhile, and the slow one
    keeps to its rate."""
    conn = connect(tenant=tenant)
    slow_id, _ = create_endpoint(conn, receiver.url("/slow"), event_types=["Slow"], rate_limit_per_second=1)
    fast_id, secret = create_endpoint(conn, receiver.url("/fast"), event_types=["Fast"])
    with conn.transaction():
        for i in range(6):
            append(conn, "order", "o-1", "Slow", {"i": i})
    receiver.wait_for(1, "/slow")
    fast = append(conn, "order", "o-2", "Fast", {})
    got = receiver.wait_for(1, "/fast")
    # before, the worker slept through the whole slow batch before anything else went out
    assert got[0].event_id == fast["event_id"]
    assert len(receiver.received("/slow")) < 6
    check_message(got[0], secret)
    wait_settled(conn, fast_id, 1)
    slow = receiver.wait_for(6, "/slow")
    wait_settled(conn, slow_id, 6)
    assert [r.json["data"]["payload"]["i"] for r in slow] == list(range(6))
    gaps = [b.at - a.at for a, b in zip(slow, slow[1:])]
    assert all(g >= 0.9 for g in gaps), gaps


# --- order ---------------------------------------------------------------------------------


def test_100_quick_appends_arrive_in_event_order(connect, tenant, receiver):
    conn = connect(tenant=tenant)
    endpoint_id, secret = create_endpoint(conn, receiver.url())
    appended = []
    for i in range(100):
        appended.append(append(conn, ("order", "invoice")[i % 2], f"s-{i % 5}", "Happened", {"i": i}))
    got = receiver.wait_for(100)
    wait_settled(conn, endpoint_id, 100)
    assert len(receiver.received()) == 100
    assert [r.position for r in got] == [e["global_position"] for e in appended]
    assert [r.json["data"]["payload"]["i"] for r in got] == list(range(100))
    versions = {}
    for req in got:
        check_message(req, secret)
        d = req.json["data"]
        key = (d["aggregate_type"], d["aggregate_id"])
        versions[key] = versions.get(key, 0) + 1
        assert d["aggregate_version"] == versions[key]  # per stream: 1, 2, 3, ... no gap


def test_a_failing_delivery_holds_back_later_ones(connect, tenant, receiver):
    conn = connect(tenant=tenant)
    calls = {}

    def respond(req, n):
        # the first event fails twice; the others succeed at once
        k = calls[req.event_id] = calls.get(req.event_id, 0) + 1
        return Reply(500) if req.event_id == first_id[0] and k <= 2 else Reply()

    first_id = [uuid.uuid4()]
    receiver.route("/hook", respond)
    endpoint_id, secret = create_endpoint(conn, receiver.url(), retry_schedule=FAST_SCHEDULE)
    e1 = append(conn, "order", "o-1", "Placed", event_id=first_id[0])
    e2 = append(conn, "order", "o-2", "Placed")
    e3 = append(conn, "order", "o-1", "Paid")
    rows = wait_settled(conn, endpoint_id, 3)
    got = receiver.received()
    assert [(r.event_id, r.status) for r in got] == [
        (e1["event_id"], 500), (e1["event_id"], 500), (e1["event_id"], 200),
        (e2["event_id"], 200), (e3["event_id"], 200)]
    for req in got:
        check_message(req, secret)
    assert [r["attempts"] for r in rows] == [3, 1, 1]
    # the later ones waited (not attempted) while the first was retried
    assert [len(attempts(conn, r["delivery_id"])) for r in rows] == [3, 1, 1]


# --- secrets -------------------------------------------------------------------------------


def split_verify(req, secrets):
    """Each of the request's signatures verifies with exactly one of `secrets`, in order."""
    parts = req.headers["webhook-signature"].split(" ")
    assert len(parts) == len(secrets) and req.headers["webhook-signature"] == " ".join(parts)
    for part, secret in zip(parts, secrets):
        assert SIGNATURE.match(part)
        Webhook(secret).verify(req.body, {**req.headers, "webhook-signature": part})
        for other in secrets:
            if other != secret:
                with pytest.raises(WebhookVerificationError):
                    Webhook(other).verify(req.body, {**req.headers, "webhook-signature": part})
    for secret in secrets:
        verify(req, secret)


def test_secret_rotation_signs_with_both_during_the_grace_period(connect, tenant, receiver):
    conn = connect(tenant=tenant)
    endpoint_id, s1 = create_endpoint(conn, receiver.url())
    append(conn, "order", "o-1", "A")
    check_message(receiver.wait_for(1)[0], s1)

    s2 = conn.execute("SELECT eventstore.rotate_webhook_secret(%s) AS s", (endpoint_id,)).fetchone()["s"]
    assert s2.startswith("whsec_") and len(base64.b64decode(s2[6:], validate=True)) == 24 and s2 != s1
    append(conn, "order", "o-1", "B")
    req = receiver.wait_for(2)[1]
    # two signatures, one space apart: the new secret's first, then the old one's
    assert req.headers["webhook-signature"].count(" ") == 1
    split_verify(req, [s2, s1])

    # a short grace: once it is over, only the newest secret signs
    s3 = conn.execute("SELECT eventstore.rotate_webhook_secret(%s, '1 second') AS s", (endpoint_id,)).fetchone()["s"]
    assert s3 not in (s1, s2)
    time.sleep(1.3)
    append(conn, "order", "o-1", "C")
    req = receiver.wait_for(3)[2]
    check_message(req, s3)
    for old in (s1, s2):
        with pytest.raises(WebhookVerificationError):
            verify(req, old)
    wait_settled(conn, endpoint_id, 3)
    expect_error("P0002", conn, "SELECT eventstore.rotate_webhook_secret(%s)", (uuid.uuid4(),))
    expect_error("22023", conn, "SELECT eventstore.rotate_webhook_secret(NULL)")


# --- outages ------------------------------------------------------------------------------


def test_receiver_down_for_a_while_then_up_gets_everything_in_order(connect, tenant, receiver):
    conn = connect(tenant=tenant)
    endpoint_id, secret = create_endpoint(conn, receiver.url(), retry_schedule="{0,1,1,1,1,1,1,1,1,1,1,1}")
    receiver.stop()
    appended = [append(conn, ("order", "invoice")[i % 2], f"s-{i % 3}", "Happened", {"i": i}) for i in range(20)]
    first = delivery_of(conn, endpoint_id, appended[0]["event_id"])

    def refused_twice():
        log = attempts(conn, first["delivery_id"])
        return log if len(log) >= 2 else None
    log = wait_until(refused_twice, timeout=ARRIVAL_TIMEOUT, what="two refused attempts")
    assert all(a["status_code"] == 0 and a["error"] for a in log)
    # the others wait behind the first
    assert [r["attempts"] for r in deliveries(conn, endpoint_id)][1:] == [0] * 19

    receiver.start()
    got = receiver.wait_for(20)
    wait_settled(conn, endpoint_id, 20)
    assert [r.event_id for r in receiver.received()] == [e["event_id"] for e in appended]
    for req in got:
        check_message(req, secret)
    assert attempts(conn, first["delivery_id"])[-1]["status_code"] == 200


# --- validation, errors, tenants, statistics -----------------------------------------------


def test_endpoint_validation(connect, tenant):
    conn = connect(tenant=tenant)
    create = "SELECT * FROM eventstore.create_webhook_endpoint(%s, %s::text[], %s::text[], NULL, %s::int[], %s::int)"
    bad = [
        ("ftp://example.com/hook", None, None, None, None),            # scheme
        ("file:///etc/passwd", None, None, None, None),
        ("example.com/hook", None, None, None, None),                  # no scheme at all
        ("http:///hook", None, None, None, None),                      # no host
        ("http://", None, None, None, None),
        ("http://user:pw@example.com/", None, None, None, None),       # credentials
        ("http://example.com:99999/", None, None, None, None),         # port
        ("http://10.0.0.1/hook", None, None, None, None),              # private, not allowed
        ("http://169.254.169.254/latest/meta-data", None, None, None, None),  # link-local (cloud metadata)
        ("http://192.168.1.10/", None, None, None, None),
        ("http://127.0.0.2/", None, None, None, None),                 # loopback, but not the allowed one
        ("http://[::1]/", None, None, None, None),
        ("http://0.0.0.0/", None, None, None, None),
        ("https://example.com/" + "x" * 2100, None, None, None, None),  # too long
        (None, None, None, None, None),
        ("https://example.com/hook", [], None, None, None),            # empty event_types
        ("https://example.com/hook", None, [], None, None),            # empty aggregate_types
        ("https://example.com/hook", None, None, [], None),            # empty retry_schedule
        ("https://example.com/hook", None, None, [0, -1], None),
        ("https://example.com/hook", None, None, [0, 700000], None),
        ("https://example.com/hook", None, None, [1] * 51, None),
        ("https://example.com/hook", None, None, None, 0),             # rate_limit_per_second < 1
        ("https://example.com/hook", None, None, None, -5),
    ]
    for args in bad:
        expect_error("22023", conn, create, args)
    err = expect_error("22023", conn, create, ("http://10.0.0.1/hook", None, None, None, None))
    assert "internal" in err.diag.message_primary and err.diag.message_hint
    assert conn.execute("SELECT count(*) AS n FROM eventstore.webhook_endpoints WHERE tenant_id = %s",
                        (tenant,)).fetchone()["n"] == 0

    # fine: the allowed address, public names and addresses, filters, a schedule, a rate limit
    for args in [("http://127.0.0.1:9/hook?x=1", None, None, None, None),
                 ("https://example.com/hook", ["A", "B"], ["order"], [0, 5, 60], 10),
                 ("HTTPS://EXAMPLE.com:8443/x", None, None, [0], 1),
                 ("http://93.184.216.34/hook", None, None, None, None)]:
        row = conn.execute(create, args).fetchone()
        CREATED.append(row["endpoint_id"])
    ep = conn.execute("SELECT * FROM eventstore.webhook_endpoints WHERE tenant_id = %s AND url = %s",
                      (tenant, "https://example.com/hook")).fetchone()
    assert (ep["event_types"], ep["aggregate_types"], ep["retry_schedule"], ep["rate_limit_per_second"],
            ep["enabled"]) == (["A", "B"], ["order"], [0, 5, 60], 10, True)

    # unknown endpoints and deliveries
    missing = uuid.uuid4()
    for sql in ("SELECT eventstore.rotate_webhook_secret(%s)", "SELECT eventstore.retry_webhook_delivery(%s)",
                "SELECT eventstore.recover_webhook_endpoint(%s, now())",
                "SELECT eventstore.enable_webhook_endpoint(%s)", "SELECT eventstore.disable_webhook_endpoint(%s)"):
        expect_error("P0002", conn, sql, (missing,))
        expect_error("22023", conn, sql.replace("%s", "NULL"))


@pytest.fixture
def admin_role(database):
    """A non-superuser role with admin access to eventstore (RLS applies to it)."""
    name = unique("es_wh_admin")
    with admin_connect(database) as conn:
        conn.execute(f'CREATE ROLE "{name}" LOGIN')
        conn.execute("SELECT eventstore.grant_access(%s, 'admin')", (name,))
    yield name
    with admin_connect(database) as conn:
        conn.execute(f'DROP OWNED BY "{name}"')
        conn.execute(f'DROP ROLE "{name}"')


def test_tenants_are_isolated(connect, receiver, admin_role):
    ta, tb = unique("a"), unique("b")
    a = connect(user=admin_role, tenant=ta)
    b = connect(user=admin_role, tenant=tb)
    ea, sa = create_endpoint(a, receiver.url("/a"))
    eb, sb = create_endpoint(b, receiver.url("/b"))

    a_events = [append(a, "order", "o-1", "Placed", {"i": i}) for i in range(3)]
    b_events = [append(b, "order", "o-1", "Placed", {"i": i}) for i in range(2)]
    a_rows = wait_settled(a, ea, 3)
    b_rows = wait_settled(b, eb, 2)
    assert [r.event_id for r in receiver.received("/a")] == [e["event_id"] for e in a_events]
    assert [r.event_id for r in receiver.received("/b")] == [e["event_id"] for e in b_events]
    for req in receiver.received("/a"):
        check_message(req, sa)
    for req in receiver.received("/b"):
        check_message(req, sb)

    # B sees only its own endpoints, deliveries and attempts
    for table, n in (("webhook_endpoints", 1), ("webhook_deliveries", 2), ("webhook_attempts", 2)):
        rows = b.execute(f"SELECT tenant_id FROM eventstore.{table}").fetchall()
        assert [r["tenant_id"] for r in rows] == [tb] * n, table
    assert b.execute("SELECT count(*) AS n FROM eventstore.webhook_endpoints WHERE endpoint_id = %s",
                     (ea,)).fetchone()["n"] == 0
    # and cannot touch A's
    for sql, arg in (("SELECT eventstore.rotate_webhook_secret(%s)", ea),
                     ("SELECT eventstore.disable_webhook_endpoint(%s)", ea),
                     ("SELECT eventstore.enable_webhook_endpoint(%s)", ea),
                     ("SELECT eventstore.recover_webhook_endpoint(%s, now() - interval '1 hour')", ea),
                     ("SELECT eventstore.retry_webhook_delivery(%s)", a_rows[0]["delivery_id"]),
                     ("SELECT eventstore.queue_event_for_webhooks(%s)", a_events[0]["event_id"])):
        expect_error("P0002", b, sql, (arg,))
    assert [e["endpoint_id"] for e in stats(b)["endpoints"]] == [str(eb)]
    assert (stats(a)["deliveries"], stats(b)["deliveries"]) == (3, 2)

    # A's endpoint still works with its own secret
    later = append(a, "order", "o-1", "Placed", {"i": 3})
    req = receiver.wait_for(4, "/a")[3]
    assert req.event_id == later["event_id"]
    check_message(req, sa)
    assert len(receiver.received("/b")) == 2
    assert [r["delivery_id"] for r in b_rows] == [r["delivery_id"] for r in deliveries(b, eb)]


def test_delivery_stats_count_the_deliveries_and_attempts(connect, tenant, receiver):
    conn = connect(tenant=tenant)
    receiver.route("/flaky", first_then(1, Reply(500)))
    receiver.route("/dead", always(404, b"no such hook"))
    before = conn.execute("SELECT clock_timestamp() AS t").fetchone()["t"]
    ok_id, _ = create_endpoint(conn, receiver.url("/ok"), event_types=["Ok"])
    flaky_id, _ = create_endpoint(conn, receiver.url("/flaky"), event_types=["Flaky"], retry_schedule=FAST_SCHEDULE)
    dead_id, _ = create_endpoint(conn, receiver.url("/dead"), event_types=["Dead"], retry_schedule="{0}")
    for t in ("Ok", "Ok", "Ok", "Flaky", "Dead"):
        append(conn, "order", "o-1", t)
    wait_settled(conn, ok_id, 3)
    wait_settled(conn, flaky_id, 1)
    wait_settled(conn, dead_id, 1, status="dead")

    s = stats(conn)
    assert {k: s[k] for k in ("deliveries", "succeeded", "pending", "dead", "attempts", "failed_attempts")} == \
        {"deliveries": 5, "succeeded": 4, "pending": 0, "dead": 1, "attempts": 6, "failed_attempts": 2}
    assert s["by_status_code"] == {"200": 4, "500": 1, "404": 1}
    assert s["attempts"] == len(receiver.requests)
    assert s["avg_duration_ms"] >= 0 and s["p95_duration_ms"] >= 0
    assert [(e["endpoint_id"], e["enabled"], e["pending"], e["dead"]) for e in s["endpoints"]] == \
        [(str(ok_id), True, 0, 0), (str(flaky_id), True, 0, 0), (str(dead_id), True, 0, 1)]
    assert {**s, "since": None} == {**stats(conn, before), "since": None}
    # the same counts as the tables
    counted = conn.execute(
        "SELECT (SELECT count(*) FROM eventstore.webhook_deliveries WHERE tenant_id = %(t)s) AS deliveries,"
        " (SELECT count(*) FROM eventstore.webhook_attempts WHERE tenant_id = %(t)s) AS attempts",
        {"t": tenant}).fetchone()
    assert (counted["deliveries"], counted["attempts"]) == (5, 6)
    # since: later than all of them
    later = stats(conn, datetime.now(timezone.utc) + timedelta(minutes=1))
    assert (later["deliveries"], later["attempts"], later["by_status_code"]) == (0, 0, {})
    assert len(later["endpoints"]) == 3
    expect_error("22023", conn, "SELECT eventstore.get_webhook_delivery_stats(NULL)")


# --- a crash (last: it restarts the cluster) -------------------------------------------------


def test_worker_killed_during_a_burst_loses_nothing(connect, tenant, receiver):
    conn = connect(tenant=tenant)
    # a little slow, so that the burst is still going out when the worker is killed
    receiver.route("/hook", always(200, b"ok", delay=0.01))
    endpoint_id, secret = create_endpoint(conn, receiver.url())
    pid = conn.execute("SELECT eventstore.worker_status() AS s").fetchone()["s"]["pid"]
    assert conn.execute("SELECT count(*) AS n FROM pg_stat_activity WHERE backend_type = 'eventstore worker'"
                        " AND pid = %s", (pid,)).fetchone()["n"] == 1
    appended = []
    for i in range(300):
        appended.append(append(conn, "order", f"o-{i % 7}", "Happened", {"i": i}))

    def part_way():
        n = len(receiver.received())
        if n >= 300:
            pytest.fail("everything was delivered before the worker could be killed")
        return n if n > 0 else None
    sent_before = wait_until(part_way, timeout=ARRIVAL_TIMEOUT, interval=0.005, what="the burst to start")
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()

    # the postmaster treats it as a crash: every backend ends, the cluster recovers
    def connection_dropped():
        try:
            conn.execute("SELECT 1")
            return False
        except psycopg.OperationalError:
            return True
    wait_until(connection_dropped, timeout=10, interval=0.05, what="the crash restart to end our connection")
    if CLUSTER:
        with open(f"{CLUSTER}/server.log", errors="replace") as f:
            assert f"(PID {pid}) was terminated by signal 9" in f.read()
    conn = connect_retrying(connect, tenant=tenant)
    assert wait_for_worker(timeout=60, not_pid=pid) is not None, "the worker did not come back after the crash"

    # at least once: every event arrives, and soon: the worker serving the database after the
    # crash goes on where the killed one stopped
    want = {e["event_id"] for e in appended}
    try:
        wait_until(lambda: want <= {r.event_id for r in receiver.received()},
                   timeout=max(1.0, killed_at + RECOVERY_TIMEOUT - time.monotonic()), interval=0.1,
                   what="every event of the burst to arrive after the crash")
    except AssertionError:
        stuck = conn.execute(
            "SELECT count(*) AS n, max(lease_until) - now() AS left FROM eventstore.webhook_deliveries"
            " WHERE endpoint_id = %s AND status = 'delivering'", (endpoint_id,)).fetchone()
        arrived = len({r.event_id for r in receiver.received()})
        pytest.fail(f"{RECOVERY_TIMEOUT}s after the worker was killed only {arrived} of 300 events had arrived;"
                    f" {stuck['n']} deliveries are still leased by the killed worker for another {stuck['left']}")
    recovered_in = time.monotonic() - killed_at
    rows = wait_settled(conn, endpoint_id, 300)
    got = receiver.received()
    by_event = {}
    for req in got:
        check_message(req, secret)
        by_event.setdefault(req.event_id, []).append(req)
    assert set(by_event) == want
    for event_id, copies in by_event.items():
        # duplicates are the same message: same id, same body
        assert len({c.headers["webhook-id"] for c in copies}) == 1 and len({c.body for c in copies}) == 1
    # in event order, counting each event where it first arrived
    firsts = list(dict.fromkeys(r.event_id for r in got))
    assert firsts == [e["event_id"] for e in appended]
    assert {r["message_id"] for r in rows} == {c[0].headers["webhook-id"] for c in by_event.values()}
    print(f"killed after {sent_before} of 300 requests; {len(got) - 300} duplicates;"
          f" all arrived {recovered_in:.1f}s after the kill")


def test_deleting_an_endpoint_deletes_its_deliveries_and_appends_take_no_lock_on_it(connect, tenant, receiver):
    """Deliveries keep no foreign key to their endpoint (its check locked the endpoint's row in
    every appending transaction); a trigger deletes them with the endpoint, as ON DELETE CASCADE
    did."""
    conn = connect(tenant=tenant)
    keep_id, _ = create_endpoint(conn, receiver.url("/keep"), event_types=["Kept"])
    gone_id, _ = create_endpoint(conn, receiver.url("/gone"), event_types=["Placed"])
    with conn.transaction():
        append(conn, "order", "o-9", "Placed", {"n": 1})
        # the appending transaction holds no row lock on the endpoint
        locks = conn.execute(
            "SELECT count(*) AS n FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
            " WHERE c.relname = 'webhook_endpoints' AND l.pid = pg_backend_pid() AND l.mode = 'RowShareLock'").fetchone()["n"]
        assert locks == 0
    append(conn, "order", "o-9", "Kept", {"n": 2})
    assert len(deliveries(conn, gone_id)) == 1 and len(deliveries(conn, keep_id)) == 1
    with admin_connect(conn.info.dbname) as admin:
        admin.execute("DELETE FROM eventstore.webhook_endpoints WHERE endpoint_id = %s", (gone_id,))
    assert deliveries(conn, gone_id) == []
    assert len(deliveries(conn, keep_id)) == 1
