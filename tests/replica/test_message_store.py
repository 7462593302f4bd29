"""The Message DB read functions (schema message_store, Message DB 1.3 signatures) on the hot
standby. The façade is built separately: until it is installed, these tests are skipped."""

import pytest

from conftest import Servers, caught_up, expect_error, unique


@pytest.fixture(scope="module")
def message_db():
    s = Servers()
    p = s.primary()
    installed = p.execute("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'message_store') AS i").fetchone()["i"]
    if not installed:
        s.close()
        pytest.skip("schema message_store does not exist (the Message DB façade is not installed)")
    tenant = unique("mdb")
    p = s.primary(tenant=tenant)
    for i in range(5):
        p.execute("SELECT message_store.write_message(gen_random_uuid()::varchar, %s, 'Deposited', %s::jsonb)",
                  (f"account-{i % 2}", f'{{"amount": {i}}}'))
    p.execute("SELECT message_store.write_message(gen_random_uuid()::varchar, 'account-0', 'Withdrawn', '{}'::jsonb)")
    caught_up()
    yield s, tenant
    s.close()


READS = [
    ("SELECT * FROM message_store.get_stream_messages('account-0')", None),
    ("SELECT * FROM message_store.get_stream_messages(%s, %s, %s)", ("account-0", 1, 2)),
    ("SELECT * FROM message_store.get_category_messages('account')", None),
    ("SELECT * FROM message_store.get_category_messages(%s, %s, %s, NULL, %s, %s)", ("account", 1, 100, 0, 2)),
    ("SELECT * FROM message_store.get_last_stream_message('account-0')", None),
    ("SELECT * FROM message_store.get_last_stream_message(%s, %s)", ("account-0", "Deposited")),
    ("SELECT message_store.stream_version('account-0') AS v", None),
    ("SELECT message_store.stream_version('account-none') AS v", None),
]


@pytest.mark.parametrize("sql,params", READS)
def test_message_db_reads_on_the_standby_equal_the_primary(message_db, sql, params):
    s, tenant = message_db
    here = s.primary(tenant=tenant).execute(sql, params).fetchall()
    there = s.standby(tenant=tenant).execute(sql, params).fetchall()
    assert here == there


def test_write_message_on_the_standby_is_25006(message_db):
    s, tenant = message_db
    expect_error("25006", s.standby(tenant=tenant),
                 "SELECT message_store.write_message(gen_random_uuid()::varchar, 'account-0', 'X', '{}'::jsonb)")
