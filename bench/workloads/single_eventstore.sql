-- 1 event per transaction through eventstore.append_event.
\set sid random(1, 1000)
SELECT * FROM eventstore.append_event('account', :sid, 'Deposited', '@PAYLOAD@', '{}');
