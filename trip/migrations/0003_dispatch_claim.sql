-- A dispatcher's claim on a trip (trip/dispatch.py): a lease in the row instead of a row lock
-- held across the calls to the location service. NULL when no dispatcher works on the trip.
ALTER TABLE trips ADD COLUMN dispatch_claim text;
ALTER TABLE trips ADD COLUMN dispatch_claim_until timestamptz;
