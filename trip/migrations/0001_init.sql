-- The trip service's tables. Double booking is impossible by construction: a driver holds at
-- most one pending offer and at most one live trip, a trip offers to one driver at a time and
-- a rider has at most one live trip, each enforced by a unique index.

CREATE TABLE quotes (
    quote_id         text PRIMARY KEY,
    rider_id         text NOT NULL,
    pickup_lat       double precision NOT NULL,
    pickup_lng       double precision NOT NULL,
    dropoff_lat      double precision NOT NULL,
    dropoff_lng      double precision NOT NULL,
    vehicle_class    text NOT NULL,
    price_minor      bigint NOT NULL,
    currency         text NOT NULL,
    surge_multiplier double precision NOT NULL,
    distance_m       integer NOT NULL,
    duration_s       integer NOT NULL,
    created_at       timestamptz NOT NULL,
    expires_at       timestamptz NOT NULL,
    -- Set in the transaction that books the trip: a quote books at most one.
    trip_id          text UNIQUE
);

CREATE TABLE trips (
    id                     text PRIMARY KEY,
    rider_id               text NOT NULL,
    vehicle_class          text NOT NULL,
    state                  text NOT NULL,
    version                bigint NOT NULL,
    quote_id               text NOT NULL UNIQUE REFERENCES quotes (quote_id),
    pickup_lat             double precision NOT NULL,
    pickup_lng             double precision NOT NULL,
    dropoff_lat            double precision NOT NULL,
    dropoff_lng            double precision NOT NULL,
    pickup_cell            text NOT NULL,
    pickup_address         text NOT NULL DEFAULT '',
    dropoff_address        text NOT NULL DEFAULT '',
    quoted_fare_minor      bigint NOT NULL,
    currency               text NOT NULL,
    surge_multiplier       double precision NOT NULL,
    estimated_distance_m   integer NOT NULL,
    estimated_duration_s   integer NOT NULL,
    requested_at           timestamptz NOT NULL,
    driver_id              text,
    offer_attempts         integer NOT NULL DEFAULT 0,
    excluded_driver_ids    text[] NOT NULL DEFAULT '{}',
    dispatch_started_at    timestamptz,
    final_fare_minor       bigint,
    distance_m             integer,
    duration_s             integer,
    cancellation_fee_minor bigint,
    cancelled_by           text,
    cancel_reason          text NOT NULL DEFAULT '',
    rider_rating           smallint,
    driver_rating          smallint,
    accepted_at            timestamptz,
    arrived_at             timestamptz,
    started_at             timestamptz,
    completed_at           timestamptz,
    cancelled_at           timestamptz,
    ended_at               timestamptz
);

-- One live trip per rider.
CREATE UNIQUE INDEX trips_one_live_trip_per_rider ON trips (rider_id)
    WHERE state IN ('REQUESTED', 'DISPATCHING', 'ACCEPTED', 'ARRIVED', 'IN_PROGRESS');
-- One live trip per driver.
CREATE UNIQUE INDEX trips_one_live_trip_per_driver ON trips (driver_id)
    WHERE state IN ('ACCEPTED', 'ARRIVED', 'IN_PROGRESS');
-- The dispatcher's poller looks only at trips still looking for a driver.
CREATE INDEX trips_dispatching ON trips (requested_at) WHERE state IN ('REQUESTED', 'DISPATCHING');
-- Demand for surge: recent requests per H3 cell.
CREATE INDEX trips_cell_requested ON trips (pickup_cell, requested_at);
-- ListTrips, newest first (keyset pagination).
CREATE INDEX trips_newest ON trips (requested_at DESC, id DESC);
CREATE INDEX trips_rider_newest ON trips (rider_id, requested_at DESC, id DESC);
CREATE INDEX trips_driver_newest ON trips (driver_id, requested_at DESC, id DESC);

-- Pending offers: a driver holds at most one, a trip offers to one driver at a time.
CREATE TABLE offers (
    offer_id             text PRIMARY KEY,
    trip_id              text NOT NULL UNIQUE REFERENCES trips (id),
    driver_id            text NOT NULL UNIQUE,
    attempt              integer NOT NULL,
    offered_at           timestamptz NOT NULL,
    expires_at           timestamptz NOT NULL
);
CREATE INDEX offers_expiry ON offers (expires_at);

-- Every transition of every trip: who, when, from, to, why.
CREATE TABLE trip_transitions (
    trip_id    text NOT NULL REFERENCES trips (id),
    version    bigint NOT NULL,
    from_state text,
    to_state   text NOT NULL,
    command    text NOT NULL,
    actor      text NOT NULL,
    actor_id   text NOT NULL DEFAULT '',
    reason     text NOT NULL DEFAULT '',
    at         timestamptz NOT NULL,
    PRIMARY KEY (trip_id, version)
);

-- The last surge multiplier per H3 cell, the "previous" of the smoothing.
CREATE TABLE surge (
    cell       text PRIMARY KEY,
    multiplier double precision NOT NULL,
    updated_at timestamptz NOT NULL
);
