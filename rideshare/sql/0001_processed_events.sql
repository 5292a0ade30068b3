-- Idempotent consumers: a consumer inserts (consumer, event_id) in the same transaction as the
-- event's effect (rideshare.bus.claim_event); a conflict means the event was already handled.
CREATE TABLE processed_events (
    consumer     text        NOT NULL,   -- durable consumer name
    event_id     text        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
