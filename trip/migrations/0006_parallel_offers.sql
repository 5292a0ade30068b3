-- Parallel offers (RIDESHARE_DISPATCH_PARALLEL_OFFERS): a trip may be offered to up to K
-- drivers at once. A driver still holds at most one pending offer (offers_driver_id_key);
-- the one-pending-offer-per-trip key becomes one offer per (trip, slot), the slots of a trip
-- being 0 .. K-1, so two dispatch steps that fill the same place of a trip at once still
-- collide in the index, as two offers of a trip did before. K = 1 is the old rule exactly.
ALTER TABLE offers ADD COLUMN slot smallint NOT NULL DEFAULT 0 CHECK (slot >= 0);
CREATE UNIQUE INDEX offers_one_per_trip_slot ON offers (trip_id, slot);
ALTER TABLE offers DROP CONSTRAINT offers_trip_id_key;
