-- A claim is more than its executor: each claim of an atom gets its own token, and every write made under
-- the claim names it. A stale claim of the same executor (a re-plan changed the atom, or the lease ran out
-- and was taken over) then matches no row and changes nothing.
ALTER TABLE atoms ADD COLUMN lease_token uuid;

-- An attempt that crashed (checker gone, store error after the call) is recorded like any other.
ALTER TABLE atom_attempts DROP CONSTRAINT atom_attempts_outcome_check;
ALTER TABLE atom_attempts ADD CONSTRAINT atom_attempts_outcome_check
    CHECK (outcome IN ('succeeded', 'invalid', 'llm_error', 'released', 'error'));
