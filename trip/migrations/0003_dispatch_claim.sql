-- A dispatcher's claim on a trip (trip/dispatch.py): a lease in the row instead of a row lock
-- held across the calls to the location service. It holds until dispatch_claim_until, and only
-- while the trip is still at dispatch_claim_version: any write of the trip ends it.
ALTER TABLE trips ADD COLUMN dispatch_claim text;
ALTER TABLE trips ADD COLUMN dispatch_claim_until timestamptz;
ALTER TABLE trips ADD COLUMN dispatch_claim_version integer;
