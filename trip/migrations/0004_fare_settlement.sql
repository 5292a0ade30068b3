-- The basis of every final fare (trip/pricing.py, FareSettlement): the quote, what the service
-- measured and from where, the rule applied, whether the ride was flagged for review, and what
-- the driver's app reported (recorded, never priced). One document per trip: it is written
-- once, when the ride ends, and read whole. NULL for trips that have not ended, and for rides
-- completed before it was recorded.
ALTER TABLE trips ADD COLUMN fare_settlement jsonb;
