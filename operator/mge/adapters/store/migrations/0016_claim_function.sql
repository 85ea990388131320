-- A claim in one round trip. The ramps of plans with work are locked first (a concurrent claim skips those
-- plans rather than use the same room), then atoms are claimed by a second statement: in a VOLATILE
-- function each statement takes a new snapshot, so the claim sees every atom claimed before the lock was
-- got (one statement would count running atoms as of before it waited). Each claimed atom comes with the
-- code of its dependencies, which its prompt needs.
CREATE FUNCTION mge_claim_atoms(p_executor text, p_limit int, p_lease_s float8, p_pool text)
RETURNS TABLE (
    masterplan_id uuid, atom_id text, trace_id uuid, file text, language text, description text,
    depends_on text[], wave_index int, attempts int, max_attempts int, model text, estimated_tokens int,
    claims int, priority int, plan_priority int, lease_token uuid, has_context boolean,
    dependency_outputs jsonb
)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    ramp_plans uuid[];
    ramp_allowances int[];
BEGIN
    SELECT coalesce(array_agg(l.masterplan_id), '{}'), coalesce(array_agg(l.allowance), '{}')
    INTO ramp_plans, ramp_allowances
    FROM (
        SELECT r.masterplan_id, r.allowance
        FROM plan_ramps r
        WHERE EXISTS (SELECT 1 FROM atoms w WHERE w.masterplan_id = r.masterplan_id
                      AND w.state IN ('ready', 'running'))
        FOR UPDATE OF r SKIP LOCKED
    ) l;

    -- Per plan, at most its room (a ramping plan's allowance minus its atoms running on any executor; plans
    -- ramping under another claim's lock are left out), then the best of those overall. Each plan's
    -- candidates are locked with SKIP LOCKED, so executors never share an atom.
    RETURN QUERY
    WITH plans AS (
        SELECT m.id, m.priority,
               CASE WHEN r.plan_id IS NULL THEN p_limit
                    ELSE r.allowance - (SELECT count(*) FROM atoms x WHERE x.masterplan_id = m.id
                                        AND x.state = 'running' AND x.lease_expires_at >= now())::int
               END AS room
        FROM masterplans m
        LEFT JOIN unnest(ramp_plans, ramp_allowances) AS r(plan_id, allowance) ON r.plan_id = m.id
        WHERE NOT m.suspended AND NOT m.budget_exhausted AND m.llm_pool IS NOT DISTINCT FROM p_pool
          AND (r.plan_id IS NOT NULL OR NOT EXISTS (SELECT 1 FROM plan_ramps l WHERE l.masterplan_id = m.id))
          AND EXISTS (SELECT 1 FROM atoms w WHERE w.masterplan_id = m.id AND w.state IN ('ready', 'running'))
    ),
    claimable AS (
        SELECT c.masterplan_id, c.atom_id
        FROM plans p
        CROSS JOIN LATERAL (
            SELECT a.masterplan_id, a.atom_id, a.priority, a.updated_at
            FROM atoms a
            WHERE a.masterplan_id = p.id
              AND (a.state = 'ready' OR (a.state = 'running' AND a.lease_expires_at < now()))
            ORDER BY a.priority DESC, a.updated_at, a.atom_id
            LIMIT greatest(least(p.room, p_limit), 0)
            FOR UPDATE OF a SKIP LOCKED
        ) c
        ORDER BY c.priority DESC, p.priority DESC, c.updated_at, c.atom_id
        LIMIT p_limit
    ),
    claimed AS (
        UPDATE atoms a
        SET state = 'running', lease_owner = p_executor,
            lease_expires_at = now() + make_interval(secs => p_lease_s), lease_token = gen_random_uuid(),
            claims = a.claims + 1, started_at = coalesce(a.started_at, now()), updated_at = now()
        FROM claimable c, masterplans m
        WHERE a.masterplan_id = c.masterplan_id AND a.atom_id = c.atom_id AND m.id = a.masterplan_id
        RETURNING a.masterplan_id, a.atom_id, a.trace_id, a.file, a.language, a.description, a.depends_on,
                  a.wave_index, a.attempts, a.max_attempts, m.model, a.estimated_tokens, a.claims,
                  a.priority, m.priority AS plan_priority, a.lease_token, m.context IS NOT NULL AS has_context
    )
    SELECT k.*,
           (SELECT coalesce(jsonb_agg(jsonb_build_array(d.atom_id, d.file, d.output)
                                      ORDER BY d.wave_index, d.atom_id), '[]'::jsonb)
            FROM atoms d
            WHERE d.masterplan_id = k.masterplan_id AND d.atom_id = ANY(k.depends_on) AND d.state = 'succeeded')
    FROM claimed k;
END
$$;
