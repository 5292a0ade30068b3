-- Driver accounts. Phone numbers and plates are unique by constraint, so of two concurrent
-- sign-ups (or registrations) exactly one wins and the other gets ALREADY_EXISTS.
CREATE TABLE drivers (
    id                text        PRIMARY KEY,
    name              text        NOT NULL,
    phone             text        NOT NULL CONSTRAINT drivers_phone_key UNIQUE,
    license_number    text        NOT NULL,
    password_hash     text        NOT NULL,      -- scrypt$n$r$p$salt$hash, never leaves the service
    online            boolean     NOT NULL DEFAULT false,
    active_vehicle_id text,                      -- the vehicle the driver is online with
    current_trip_id   text,                      -- the live trip holding the driver (trip events)
    rating_sum        bigint      NOT NULL DEFAULT 0,
    rating_count      integer     NOT NULL DEFAULT 0,
    version           bigint      NOT NULL DEFAULT 1,  -- aggregate_version of driver.* events
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE vehicles (
    id            text        PRIMARY KEY,
    driver_id     text        NOT NULL REFERENCES drivers (id),
    make          text        NOT NULL,
    model         text        NOT NULL,
    plate         text        NOT NULL CONSTRAINT vehicles_plate_key UNIQUE,  -- normalised
    seats         smallint    NOT NULL CHECK (seats BETWEEN 1 AND 8),
    vehicle_class smallint    NOT NULL,           -- rideshare.common.v1.VehicleClass number
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX vehicles_by_driver_idx ON vehicles (driver_id, created_at);

-- Which trips hold which driver, from trip.* events: the newest aggregate_version per
-- (driver, trip) wins, so a late trip.accepted never undoes a trip.completed.
CREATE TABLE driver_trips (
    driver_id text    NOT NULL,
    trip_id   text    NOT NULL,
    version   bigint  NOT NULL,
    live      boolean NOT NULL,
    PRIMARY KEY (driver_id, trip_id)
);

-- Ratings riders gave drivers, one per trip.
CREATE TABLE driver_ratings (
    trip_id   text        PRIMARY KEY,
    driver_id text        NOT NULL,
    stars     smallint    NOT NULL CHECK (stars BETWEEN 1 AND 5),
    rated_at  timestamptz NOT NULL
);
