-- Deliveries are queued by the appending statement itself, so a rolled-back append queues
-- nothing. The transition table holds the statement's events.
CREATE TRIGGER events_queue_webhooks
    AFTER INSERT ON eventstore.events
    REFERENCING NEW TABLE AS appended
    FOR EACH STATEMENT EXECUTE FUNCTION eventstore._queue_webhooks();
