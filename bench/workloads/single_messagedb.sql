-- 1 event per transaction through Message DB's write_message (stream account-<sid>).
\set sid random(1, 1000)
SELECT message_store.write_message(gen_random_uuid()::varchar, 'account-' || :sid::text, 'Deposited', '@PAYLOAD@', '{}');
