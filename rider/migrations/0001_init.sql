-- Rider accounts. The phone number is the login and unique: the constraint, not a prior
-- SELECT, decides which of two concurrent sign-ups wins.
CREATE TABLE riders (
    id            text        PRIMARY KEY,
    name          text        NOT NULL,
    phone         text        NOT NULL CONSTRAINT riders_phone_key UNIQUE,
    email         text        NOT NULL DEFAULT '',
    password_hash text        NOT NULL,          -- scrypt$n$r$p$salt$hash, never leaves the service
    rating_sum    bigint      NOT NULL DEFAULT 0,
    rating_count  integer     NOT NULL DEFAULT 0,
    version       bigint      NOT NULL DEFAULT 1, -- aggregate_version of rider.* events
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Ratings drivers gave riders, one per trip: a second trip.rated for the same trip (a new
-- event id, not a redelivery) does not count twice.
CREATE TABLE rider_ratings (
    trip_id    text        PRIMARY KEY,
    rider_id   text        NOT NULL,
    stars      smallint    NOT NULL CHECK (stars BETWEEN 1 AND 5),
    rated_at   timestamptz NOT NULL
);

-- Trip history read model, fed by trip.* events. Columns mirror rider.v1.TripSummary; state
-- and vehicle_class hold the proto enum numbers.
CREATE TABLE trips (
    trip_id        text        PRIMARY KEY,
    rider_id       text        NOT NULL,
    version        bigint      NOT NULL,          -- newest trip aggregate_version applied
    state          smallint    NOT NULL,
    driver_id      text        NOT NULL DEFAULT '',
    pickup_lat     double precision,
    pickup_lng     double precision,
    dropoff_lat    double precision,
    dropoff_lng    double precision,
    fare_minor     bigint,
    fare_currency  text,
    vehicle_class  smallint    NOT NULL DEFAULT 0,
    requested_at   timestamptz,
    completed_at   timestamptz,
    ended_at       timestamptz,
    first_seen_at  timestamptz NOT NULL,          -- occurred_at of the first event seen
    -- Newest first by request time; until trip.requested arrives, by the first event's time.
    sort_at        timestamptz GENERATED ALWAYS AS (COALESCE(requested_at, first_seen_at)) STORED
);

CREATE INDEX trips_by_rider_idx ON trips (rider_id, sort_at DESC, trip_id DESC);
