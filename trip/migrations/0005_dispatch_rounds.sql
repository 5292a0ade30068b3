-- Every dispatch round of every trip (ExplainDispatch): how it was decided (policy, the trips
-- of its window), the drivers it considered and excluded, each with distance, estimated
-- pickup time, cost and verdict, and the offers it made (candidates, a JSON document), or
-- why it gave up. Written in the transaction that commits the round's offer, so a
-- round on record is a round that happened. How an offer ended is read from the trip's
-- history (the first offer transition after `version`).
CREATE TABLE dispatch_rounds (
    trip_id      text NOT NULL REFERENCES trips (id),
    round        integer NOT NULL,
    version      bigint NOT NULL,
    at           timestamptz NOT NULL,
    policy       text NOT NULL,
    window_trips integer NOT NULL,
    gave_up      text NOT NULL DEFAULT '',
    candidates   jsonb NOT NULL,
    PRIMARY KEY (trip_id, round)
);
