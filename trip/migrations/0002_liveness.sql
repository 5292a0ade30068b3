-- Every live state has a clock (trip/liveness.py): what the sweeper records, and how it finds
-- the trips whose clock may have run out.

-- The last time the system flagged a ride in progress for an operator, and why.
ALTER TABLE trips ADD COLUMN flagged_at timestamptz;
ALTER TABLE trips ADD COLUMN flag_reason text NOT NULL DEFAULT '';
-- What final_fare was priced from: METERED or QUOTE (a ride the system ended); NULL before.
ALTER TABLE trips ADD COLUMN fare_basis text;

-- The sweeper reads only live trips, by state.
CREATE INDEX trips_live_by_state ON trips (state, requested_at)
    WHERE state IN ('REQUESTED', 'DISPATCHING', 'ACCEPTED', 'ARRIVED', 'IN_PROGRESS');
