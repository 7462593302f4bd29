-- Diagnostic: as single_plpgsql.sql, plus eventstore's NOTIFY eventstore_events per transaction.
\set sid random(1, 1000)
SELECT * FROM bench.append_event_plpgsql_notify('account', :sid, 'Deposited', '@PAYLOAD@', '{}');
