"""hash_64, category, id, cardinal_id and is_category give what Message DB's definitions give,
computed here in plain SQL from those definitions (md5 for hash_64, split_part and strpos for
the names)."""

import pytest

NAMES = [
    "account", "account-123", "account:command-123", "account-1+2", "account:command-1+2+3",
    "a-b-c", "-x", "x-", "-", "+", "account-+", "", "naïve-ünïcode", "with space-1",
    "sameprefix", "sameprefix-0", "withCapitals-ABC", "x" * 300 + "-" + "y" * 300, None,
]


@pytest.mark.parametrize("name", NAMES)
def test_stream_name_functions(connect, name):
    conn = connect()
    got = conn.execute(
        "SELECT message_store.category(%(n)s) AS category, message_store.id(%(n)s) AS id,"
        "       message_store.cardinal_id(%(n)s) AS cardinal_id, message_store.is_category(%(n)s) AS is_category,"
        "       message_store.hash_64(%(n)s) AS hash",
        {"n": name}).fetchone()
    expected = conn.execute(
        """SELECT split_part(%(n)s, '-', 1) AS category,
                  CASE WHEN strpos(%(n)s, '-') = 0 THEN NULL ELSE substring(%(n)s, strpos(%(n)s, '-') + 1) END AS id,
                  split_part(CASE WHEN strpos(%(n)s, '-') = 0 THEN NULL
                                  ELSE substring(%(n)s, strpos(%(n)s, '-') + 1) END, '+', 1) AS cardinal_id,
                  CASE WHEN NOT strpos(%(n)s, '-') = 0 THEN false ELSE true END AS is_category,
                  left('x' || md5(%(n)s), 17)::bit(64)::bigint AS hash""",
        {"n": name}).fetchone()
    assert got == expected


def test_hash_64_known_values(connect):
    conn = connect()
    # md5('') = d41d8cd98f00b204..., md5('123') = 202cb962ac59075b...
    rows = conn.execute(
        "SELECT message_store.hash_64(v) AS h FROM unnest(ARRAY['', '123']) AS v").fetchall()
    assert [r["h"] for r in rows] == [int("d41d8cd98f00b204", 16) - 2**64, int("202cb962ac59075b", 16)]


def test_versions_and_signatures(connect):
    conn = connect()
    assert conn.execute("SELECT message_store.message_store_version() AS v").fetchone()["v"] == "1.3.0"
    rows = conn.execute(
        """SELECT p.proname || '(' || pg_get_function_arguments(p.oid) || ') ' || pg_get_function_result(p.oid) AS f
             FROM pg_proc p WHERE p.pronamespace = 'message_store'::regnamespace AND p.proname !~ '^_'
            ORDER BY 1""").fetchall()
    assert [r["f"] for r in rows] == [
        "acquire_lock(stream_name character varying) bigint",
        "cardinal_id(stream_name character varying) character varying",
        "category(stream_name character varying) character varying",
        "get_category_messages(category character varying, \"position\" bigint DEFAULT 1, batch_size bigint DEFAULT 1000,"
        " correlation character varying DEFAULT NULL::character varying, consumer_group_member bigint DEFAULT NULL::bigint,"
        " consumer_group_size bigint DEFAULT NULL::bigint, condition character varying DEFAULT NULL::character varying)"
        " SETOF message_store.message",
        "get_last_stream_message(stream_name character varying, type character varying DEFAULT NULL::character varying)"
        " SETOF message_store.message",
        "get_stream_messages(stream_name character varying, \"position\" bigint DEFAULT 0, batch_size bigint DEFAULT 1000,"
        " condition character varying DEFAULT NULL::character varying) SETOF message_store.message",
        "hash_64(value character varying) bigint",
        "id(stream_name character varying) character varying",
        "is_category(stream_name character varying) boolean",
        "message_store_version() character varying",
        "stream_version(stream_name character varying) bigint",
        "write_message(id character varying, stream_name character varying, type character varying, data jsonb,"
        " metadata jsonb DEFAULT NULL::jsonb, expected_version bigint DEFAULT NULL::bigint) bigint",
    ]
    cols = conn.execute(
        """SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum) AS c
             FROM pg_attribute a WHERE a.attrelid = %s::regclass AND a.attnum > 0""",
        ("message_store.message",)).fetchone()["c"]
    assert cols == ("id character varying, stream_name character varying, type character varying, position bigint,"
                    " global_position bigint, data character varying, metadata character varying,"
                    " time timestamp without time zone")
    cols = conn.execute(
        """SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum) AS c
             FROM pg_attribute a WHERE a.attrelid = 'message_store.messages'::regclass AND a.attnum > 0""").fetchone()["c"]
    assert cols == ("global_position bigint, position bigint, time timestamp without time zone, stream_name text,"
                    " type text, data jsonb, metadata jsonb, id uuid")
