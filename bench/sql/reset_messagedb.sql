-- Fresh state for the Message DB workload: 1000 streams of 20 messages, analyzed.
TRUNCATE message_store.messages;
INSERT INTO message_store.messages (stream_name, position, type, data, metadata)
SELECT 'account-' || s, v - 1, 'Deposited', '@PAYLOAD@', '{}'
FROM generate_series(1, 1000) AS s, generate_series(1, 20) AS v;
VACUUM ANALYZE message_store.messages;
