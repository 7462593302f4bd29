-- 1000 events per transaction through eventstore.append_events; the same JSON array as the raw
-- workload, sent by the client as a bind parameter in every transaction.
\if :loaded = 0
SELECT bench.batch_json(1000) AS batch \gset
\set loaded 1
\endif
\set sid random(1, 1000)
SELECT * FROM eventstore.append_events('account', :sid, :batch::jsonb);
