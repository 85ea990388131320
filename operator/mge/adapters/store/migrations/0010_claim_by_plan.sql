-- Claims look for each plan's unfinished atoms in priority order (the per-plan ramp caps each plan).
CREATE INDEX atoms_claimable_by_plan ON atoms (masterplan_id, priority DESC, updated_at, atom_id)
    WHERE state IN ('ready', 'running');
