-- Transactional outbox: a service inserts its events here in the same transaction as the state
-- change (rideshare.outbox.add_event); OutboxRelay publishes them to JetStream and marks sent_at.
CREATE TABLE outbox (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- publish order
    event_id          text        NOT NULL UNIQUE,   -- uuid4 hex; the Nats-Msg-Id header
    subject           text        NOT NULL,          -- JetStream subject = envelope type
    aggregate_id      text        NOT NULL,
    aggregate_version bigint      NOT NULL,
    payload           bytea       NOT NULL,          -- serialized payload message
    occurred_at       timestamptz NOT NULL DEFAULT now(),
    sent_at           timestamptz                    -- NULL until JetStream acked it
);

-- The relay's claim query scans only unsent rows, in id order.
CREATE INDEX outbox_unsent_idx ON outbox (id) WHERE sent_at IS NULL;
-- Pruning of sent rows after the retention.
CREATE INDEX outbox_sent_at_idx ON outbox (sent_at) WHERE sent_at IS NOT NULL;
