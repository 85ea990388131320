-- A reservation names the claim it was made under: once the atom is claimed again (the lease ran out and
-- another executor took it over), the old claim's reservation is known dead long before its TTL.
ALTER TABLE cost_reservations ADD COLUMN lease_token uuid;
