-- Situation: an inline projection exists for another event type (never called by the benchmark).
SELECT eventstore.register_projection('other_inline', 'bench.noop_projection(eventstore.event)',
    event_types => ARRAY['Shipped'], mode => 'inline');
