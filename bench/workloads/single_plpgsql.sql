-- Diagnostic: append_event's two statements in a PL/pgSQL function (bench.append_event_plpgsql)
-- writing into the raw tables.
\set sid random(1, 1000)
SELECT * FROM bench.append_event_plpgsql('account', :sid, 'Deposited', '@PAYLOAD@', '{}');
