"""Client tests against a real, preloaded PostgreSQL 15 (started by scripts/test.sh).

Environment: EVENTSTORE_TEST_HOST, EVENTSTORE_TEST_PORT (the cluster), EVENTSTORE_TEST_CLUSTER
(its directory, for tests that need its log or must restart it). Each test module gets a fresh
database with the extension installed, dropped afterwards.
"""

import os
import uuid

import psycopg
import pytest

HOST = os.environ.get("EVENTSTORE_TEST_HOST", "127.0.0.1")
PORT = int(os.environ.get("EVENTSTORE_TEST_PORT", "5441"))
CLUSTER = os.environ.get("EVENTSTORE_TEST_CLUSTER")


def dsn(dbname, user="postgres", **options):
    parts = [f"host={HOST}", f"port={PORT}", f"dbname={dbname}", f"user={user}"]
    parts += [f"{k}={v}" for k, v in options.items()]
    return " ".join(parts)


def admin_connect(dbname="postgres"):
    return psycopg.connect(dsn(dbname), autocommit=True)


@pytest.fixture(scope="module")
def database():
    """A fresh database with eventstore installed; yields its name."""
    name = f"es_test_{uuid.uuid4().hex[:12]}"
    with admin_connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    with admin_connect(name) as conn:
        conn.execute("CREATE EXTENSION eventstore")
    yield name
    with admin_connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def connect(database):
    """Opens connections to the test database (superuser unless user= is given); all are
    closed after the test."""
    opened = []

    def _connect(user="postgres", autocommit=True, **options):
        conn = psycopg.connect(dsn(database, user=user, **options), autocommit=autocommit)
        opened.append(conn)
        return conn

    yield _connect
    for conn in opened:
        conn.close()
