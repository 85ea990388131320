-- The next atom's call reserved in the write of the one before, under the plan row's lock that write already
-- holds for its settlement: one lock and one transaction per atom where the reservation made two of each.

-- A reservation granted when the budget has room even counting every reservation (dead ones included: only
-- the ledger's locked path gives those back): the conditional increment is the lock and the check at once,
-- applied to the row's latest version, so racers never reserve past the hard cap. The reservation and its
-- "reserve" event are written only when the increment happened. NULL: no room (the caller takes the locked
-- path, which decides between waiting, granting and the hard cap).
CREATE FUNCTION mge_reserve_if_room(
    p_plan uuid, p_atom text, p_trace uuid, p_executor text, p_amount numeric, p_ttl_s float8,
    p_lease_token uuid, p_wave int, p_model text
) RETURNS bigint
LANGUAGE sql VOLATILE AS $$
WITH plan AS (
    UPDATE masterplans SET reserved_cost_usd = reserved_cost_usd + p_amount
    WHERE id = p_plan
      AND current_cost_usd + reserved_cost_usd + p_amount <= budget_limit_usd * hard_cap_percentage / 100
    RETURNING trace_id, current_cost_usd, budget_limit_usd
), reservation AS (
    INSERT INTO cost_reservations (masterplan_id, atom_id, trace_id, executor, amount_usd, expires_at, lease_token)
    SELECT p_plan, p_atom, p_trace, p_executor, p_amount, now() + make_interval(secs => p_ttl_s), p_lease_token
    FROM plan
    RETURNING id
), event AS (
    INSERT INTO cost_events (masterplan_id, trace_id, atom_id, wave_index, model, kind, amount_usd,
                             cumulative_cost_usd, budget_limit_usd, detail)
    SELECT p_plan, trace_id, p_atom, p_wave, p_model, 'reserve', p_amount, current_cost_usd, budget_limit_usd, '{}'
    FROM plan
)
SELECT id FROM reservation
$$;

-- An atom handed back or failed without an attempt under its claim: the reservations made under that claim
-- (the call reserved with the claim, never made) go back to the plan, each with a "release" event. The plan
-- row is locked first, the order every ledger write takes.
CREATE FUNCTION mge_give_back_claim_reservations(p_plan uuid, p_atom text, p_lease_token uuid, p_why text)
RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF p_lease_token IS NULL OR NOT EXISTS (SELECT 1 FROM cost_reservations r WHERE r.masterplan_id = p_plan
                                            AND r.atom_id = p_atom AND r.lease_token = p_lease_token) THEN
        RETURN;
    END IF;
    PERFORM 1 FROM masterplans WHERE id = p_plan FOR UPDATE;
    WITH released AS (
        DELETE FROM cost_reservations r
        WHERE r.masterplan_id = p_plan AND r.atom_id = p_atom AND r.lease_token = p_lease_token
        RETURNING r.atom_id, r.amount_usd
    ), plan AS (
        UPDATE masterplans SET reserved_cost_usd = reserved_cost_usd - coalesce((SELECT sum(amount_usd) FROM released), 0)
        WHERE id = p_plan
        RETURNING trace_id, current_cost_usd, budget_limit_usd
    )
    INSERT INTO cost_events (masterplan_id, trace_id, atom_id, kind, amount_usd, cumulative_cost_usd,
                             budget_limit_usd, detail)
    SELECT p_plan, p.trace_id, r.atom_id, 'release', r.amount_usd, p.current_cost_usd, p.budget_limit_usd,
           jsonb_build_object('why', p_why)
    FROM released r, plan p;
END
$$;

-- The attempt's write as in 0017, and: with `p_reserve_usd`, each atom it claims of the same plan, on its
-- first claim, comes with a reservation of that amount for its call (`reservation_id`; NULL: none, the
-- executor reserves as before). The plan row is locked first, as there.
DROP FUNCTION mge_finish_attempt(bigint, uuid, numeric, int, int, int, text, int, text, jsonb, text, uuid, text,
                                 text, text, uuid, text, text, text, int, int, boolean, numeric, int,
                                 timestamptz, jsonb, int, float8, text);

CREATE FUNCTION mge_finish_attempt(
    p_reservation bigint, p_plan uuid, p_amount numeric, p_prompt_tokens int, p_completion_tokens int,
    p_cached_tokens int, p_atom text, p_wave int, p_model text, p_detail jsonb,
    p_executor text, p_lease_token uuid, p_end text, p_output text, p_last_error text,
    p_trace uuid, p_span text, p_outcome text, p_error text, p_attempt_prompt_tokens int,
    p_attempt_completion_tokens int, p_cached boolean, p_cost numeric, p_latency_ms int,
    p_started_at timestamptz, p_context_chunks jsonb,
    p_claim_limit int, p_lease_s float8, p_pool text, p_reserve_usd numeric, p_reserve_ttl_s float8
)
RETURNS TABLE (
    still_ours boolean,
    masterplan_id uuid, atom_id text, trace_id uuid, file text, language text, description text,
    depends_on text[], wave_index int, attempts int, max_attempts int, model text, estimated_tokens int,
    claims int, priority int, plan_priority int, lease_token uuid, has_context boolean,
    dependency_outputs jsonb, reservation_id bigint
)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    ours boolean;
    made_ready text[];
    none_ready_before boolean;
    claimed boolean := false;
BEGIN
    -- "Before" is before this write, read before the settlement waits for the plan row's lock (as the
    -- write's single statement read it), not after the writes that went ahead of it while it waited.
    none_ready_before := NOT EXISTS (SELECT 1 FROM atoms w WHERE w.masterplan_id = p_plan AND w.state = 'ready');
    IF p_reservation IS NULL AND p_reserve_usd IS NOT NULL THEN  -- nothing to settle, a call to reserve for
        PERFORM 1 FROM masterplans WHERE id = p_plan FOR UPDATE;
    END IF;
    PERFORM mge_settle(p_reservation, p_plan, p_amount, p_prompt_tokens, p_completion_tokens, p_cached_tokens,
                       p_atom, p_wave, p_model, p_detail);

    WITH counted AS (
        UPDATE atoms
        SET attempts = attempts + 1, prompt_tokens = prompt_tokens + p_attempt_prompt_tokens,
            completion_tokens = completion_tokens + p_attempt_completion_tokens, cost_usd = cost_usd + p_cost,
            last_error = p_last_error, updated_at = now(),
            state = coalesce(p_end, state),
            output = CASE WHEN p_end = 'succeeded' THEN p_output ELSE output END,
            lease_owner = CASE WHEN p_end IS NULL THEN lease_owner END,
            lease_expires_at = CASE WHEN p_end IS NULL THEN lease_expires_at END,
            lease_token = CASE WHEN p_end IS NULL THEN lease_token END,
            finished_at = CASE WHEN p_end IS NULL THEN finished_at ELSE now() END
        WHERE masterplan_id = p_plan AND atom_id = p_atom AND state = 'running' AND lease_owner = p_executor
          AND lease_token = p_lease_token
        RETURNING attempts, state
    ), recorded AS (
        INSERT INTO atom_attempts (masterplan_id, atom_id, trace_id, span_id, attempt, executor, outcome, error,
                                   prompt_tokens, completion_tokens, cached, cost_usd, latency_ms, started_at,
                                   context_chunks)
        SELECT p_plan, p_atom, p_trace, p_span, attempts, p_executor, p_outcome, p_error, p_attempt_prompt_tokens,
               p_attempt_completion_tokens, p_cached, p_cost, p_latency_ms, p_started_at, p_context_chunks
        FROM counted
    ), freed AS (
        UPDATE atoms a SET unmet_dependencies = a.unmet_dependencies - 1,
            state = CASE WHEN a.unmet_dependencies = 1 THEN 'ready' ELSE a.state END, updated_at = now()
        FROM atom_dependencies d
        WHERE d.masterplan_id = p_plan AND d.depends_on = p_atom
          AND a.masterplan_id = d.masterplan_id AND a.atom_id = d.atom_id AND a.state = 'pending'
          AND EXISTS (SELECT 1 FROM counted WHERE state = 'succeeded')
        RETURNING a.atom_id, a.state
    )
    SELECT EXISTS (SELECT 1 FROM counted), ARRAY(SELECT f.atom_id FROM freed f WHERE f.state = 'ready')
    INTO ours, made_ready;

    IF p_claim_limit > 0 THEN
        RETURN QUERY
        SELECT ours, c.*,
               CASE WHEN p_reserve_usd IS NOT NULL AND c.masterplan_id = p_plan AND c.claims = 1 THEN
                   mge_reserve_if_room(p_plan, c.atom_id, c.trace_id, p_executor, p_reserve_usd, p_reserve_ttl_s,
                                       c.lease_token, c.wave_index, c.model)
               END
        FROM mge_claim_atoms(p_executor, p_claim_limit, p_lease_s, p_pool) c;
        claimed := FOUND;
    END IF;
    IF none_ready_before AND EXISTS (SELECT 1 FROM atoms a WHERE a.masterplan_id = p_plan
                                     AND a.atom_id = ANY(made_ready) AND a.state = 'ready') THEN
        PERFORM pg_notify('mge_atoms_ready', '');
    END IF;
    IF NOT claimed THEN
        still_ours := ours;
        RETURN NEXT;
    END IF;
END
$$;
