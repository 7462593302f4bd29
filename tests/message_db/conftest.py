"""The message_db layer: eventstore's Message DB façade (schema message_store) driven by the
PyPI client message-db-py (psycopg2), which no one here wrote, plus known answers, cross-API
and concurrency tests of the façade.

Reuses the client layer's fixtures and helpers (tests/client/conftest.py): a fresh database
per module with the extension installed, connections with a tenant, expect_error.
"""

import importlib.util
import pathlib
import uuid

import psycopg
import pytest
from message_db.client import MessageDB

_spec = importlib.util.spec_from_file_location(
    "client_conftest", pathlib.Path(__file__).resolve().parent.parent / "client" / "conftest.py")
client = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(client)

database = client.database
connect = client.connect
tenant = client.tenant
unique = client.unique
expect_error = client.expect_error
admin_connect = client.admin_connect
start = client.start
wait_until = client.wait_until
append = client.append
read_stream = client.read_stream
follow = client.follow


def message_store_role(database, tenant):
    """A login role set up as Message DB's installer sets up its `message_store` role (search
    path message_store), given writer access with eventstore.grant_access and pinned to
    `tenant`; returns its name."""
    role = unique("mdb")
    with admin_connect(database) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
        conn.execute("SELECT eventstore.grant_access(%s, 'writer', tenant => %s)", (role, tenant))
        conn.execute(f'ALTER ROLE "{role}" SET search_path = message_store, public')
    return role


@pytest.fixture
def mdb_factory(database):
    """Makes message-db-py clients, each as a role of its own pinned to the given tenant;
    closes their pools afterwards."""
    made = []

    def _make(tenant, max_connections=10):
        role = message_store_role(database, tenant)
        url = f"postgresql://{role}@{client.HOST}:{client.PORT}/{database}"
        store = MessageDB.from_url(url, max_connections=max_connections)
        store.role = role
        made.append(store)
        return store

    yield _make
    for store in made:
        store.connection_pool.closeall()


@pytest.fixture
def mdb(mdb_factory, tenant):
    """A message-db-py client for this test's tenant."""
    return mdb_factory(tenant)


def sql(store, query, params=None):
    """Runs SQL on one of the client's own pooled connections (search path message_store, its
    role and tenant); returns the rows as tuples."""
    conn = store.connection_pool.get_connection()
    try:
        with conn:
            with conn.cursor() as cur:
                cur.execute(query, params)
                return cur.fetchall() if cur.description else None
    finally:
        store.connection_pool.release(conn)


def category():
    """A category name of its own (no '-')."""
    return "cat" + uuid.uuid4().hex[:10]
