-- The notification service's schema. The shared outbox and processed_events tables are
-- created beside these by rideshare.migrations; processed_events holds the consumer's claims.

-- One notification for one user. created_at is the moment of the event it was made from, not
-- of the insert: a redelivered or late event sorts where it happened, and the events of one
-- trip keep their order even when several service copies race.
CREATE TABLE notifications (
    id         uuid        PRIMARY KEY,
    user_id    text        NOT NULL,
    kind       text        NOT NULL,
    title      text        NOT NULL,
    body       text        NOT NULL,
    data       jsonb       NOT NULL DEFAULT '{}',
    trip_id    text        NOT NULL DEFAULT '',
    channels   text[]      NOT NULL,   -- 'in_app', 'push', 'sms'
    event_id   text        NOT NULL,
    created_at timestamptz NOT NULL,
    read_at    timestamptz,
    -- Idempotency, by constraint and not by luck: one event notifies one user at most once.
    CONSTRAINT notifications_event_recipient_key UNIQUE (event_id, user_id)
);

-- ListNotifications: a user's newest first, keyset-paginated on (created_at, id).
CREATE INDEX notifications_user_idx ON notifications (user_id, created_at DESC, id DESC);
CREATE INDEX notifications_user_unread_idx
    ON notifications (user_id, created_at DESC, id DESC) WHERE read_at IS NULL;

-- Push and SMS: one row per notification and channel, worked by the delivery worker.
-- next_attempt_at doubles as the lease of a claimed row (see store.claim_due_deliveries).
CREATE TABLE deliveries (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    notification_id uuid        NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    channel         text        NOT NULL CHECK (channel IN ('push', 'sms')),
    status          text        NOT NULL DEFAULT 'pending'
                                CHECK (status IN ('pending', 'sent', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text        NOT NULL DEFAULT '',
    sent_at         timestamptz,
    UNIQUE (notification_id, channel)
);

CREATE INDEX deliveries_due_idx ON deliveries (next_attempt_at) WHERE status = 'pending';

-- Every attempt at a push or SMS delivery, successful or not.
CREATE TABLE delivery_attempts (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id bigint      NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempt     integer     NOT NULL,
    provider    text        NOT NULL,
    destination text        NOT NULL,
    ok          boolean     NOT NULL,
    error       text        NOT NULL DEFAULT '',
    at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (delivery_id, attempt)
);

-- Read model: who the users are (names, phone numbers for SMS), from rider.* and driver.*.
-- version is the aggregate version of the last event applied, so an older event never
-- overwrites a newer one.
CREATE TABLE users (
    user_id text   PRIMARY KEY,
    name    text   NOT NULL DEFAULT '',
    phone   text   NOT NULL DEFAULT '',
    version bigint NOT NULL
);

-- Read model: each driver's current vehicle, from driver.online, so that "driver assigned"
-- can name the car (trip.accepted does not carry it).
CREATE TABLE driver_vehicles (
    driver_id     text    PRIMARY KEY,
    driver_name   text    NOT NULL,
    make          text    NOT NULL,
    model         text    NOT NULL,
    plate         text    NOT NULL,
    vehicle_class integer NOT NULL,
    version       bigint  NOT NULL
);
