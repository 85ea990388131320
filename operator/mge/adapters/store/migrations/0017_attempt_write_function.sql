-- A call's settlement and an attempt's one write as functions, so that the write, the claim of the next
-- atoms and the wake-up run in one round trip: the plan row's lock, taken first, is held only while the
-- server works, never across a client's round trip (with 32 executors those round trips made the lock the
-- queue every write of a plan waited in). The settlement has one definition, used by both.

-- A reservation replaced by what the call spent (0 for a call that never happened). The plan row is locked
-- first (the held reservation is deleted only after), the order every ledger write takes, so a settlement
-- and a reservation that gives dead reservations back never wait for each other. The amount moves from
-- reserved to spent (an expired reservation was already given back, and is not again); "settle" is recorded
-- and, when this call took spend over the soft cap, "soft_cap" (exactly once per crossing: the increment is
-- applied to the row's latest version, so `spent - amount` is what it was just before). With no reservation
-- (a cache hit reserved nothing) it changes nothing.
CREATE FUNCTION mge_settle(
    p_reservation bigint, p_plan uuid, p_amount numeric, p_prompt_tokens int, p_completion_tokens int,
    p_cached_tokens int, p_atom text, p_wave int, p_model text, p_detail jsonb
) RETURNS void
LANGUAGE sql VOLATILE AS $$
WITH plan_lock AS (
    SELECT id FROM masterplans WHERE id = p_plan AND p_reservation IS NOT NULL FOR UPDATE
), held AS (
    DELETE FROM cost_reservations WHERE id = p_reservation AND EXISTS (SELECT 1 FROM plan_lock)
    RETURNING amount_usd
), spend AS (
    UPDATE masterplans
    SET current_cost_usd = current_cost_usd + p_amount,
        reserved_cost_usd = reserved_cost_usd - coalesce((SELECT amount_usd FROM held), 0), updated_at = now()
    WHERE id = (SELECT id FROM plan_lock)
    RETURNING trace_id, current_cost_usd, budget_limit_usd,
              budget_limit_usd * soft_cap_percentage / 100 AS soft_cap_usd
), cost_event AS (
    INSERT INTO cost_events (masterplan_id, trace_id, atom_id, wave_index, model, kind, amount_usd,
                             prompt_tokens, completion_tokens, cached_tokens, cumulative_cost_usd,
                             budget_limit_usd, detail)
    SELECT p_plan, trace_id, p_atom, p_wave, p_model, 'settle', p_amount, p_prompt_tokens, p_completion_tokens,
           p_cached_tokens, current_cost_usd, budget_limit_usd, p_detail
    FROM spend
    UNION ALL
    SELECT p_plan, trace_id, p_atom, NULL, NULL, 'soft_cap', 0, 0, 0, 0, current_cost_usd, budget_limit_usd,
           '{}'::jsonb
    FROM spend
    WHERE current_cost_usd - p_amount < soft_cap_usd AND soft_cap_usd <= current_cost_usd
)
SELECT
$$;

-- An attempt's one write: settle its reservation, count the attempt against the atom (only while the claim
-- `p_lease_token` holds) and record it; with an end ('succeeded' | 'failed') store the code or the failure,
-- and, when it succeeded, make the dependents whose last dependency this was ready. Then, with a limit,
-- claim the next atoms (a statement of its own, so it sees those dependents). Other executors are woken only
-- for dependents made ready that this claim did not take, and only when the plan had no ready atom before:
-- an executor waits for work only after a claim found none.
-- Rows: the atoms claimed, each with `still_ours` (false: the claim was lost meanwhile, and only the
-- settlement was written), or a single row of `still_ours` alone when none was claimed.
CREATE FUNCTION mge_finish_attempt(
    p_reservation bigint, p_plan uuid, p_amount numeric, p_prompt_tokens int, p_completion_tokens int,
    p_cached_tokens int, p_atom text, p_wave int, p_model text, p_detail jsonb,
    p_executor text, p_lease_token uuid, p_end text, p_output text, p_last_error text,
    p_trace uuid, p_span text, p_outcome text, p_error text, p_attempt_prompt_tokens int,
    p_attempt_completion_tokens int, p_cached boolean, p_cost numeric, p_latency_ms int,
    p_started_at timestamptz, p_context_chunks jsonb,
    p_claim_limit int, p_lease_s float8, p_pool text
)
RETURNS TABLE (
    still_ours boolean,
    masterplan_id uuid, atom_id text, trace_id uuid, file text, language text, description text,
    depends_on text[], wave_index int, attempts int, max_attempts int, model text, estimated_tokens int,
    claims int, priority int, plan_priority int, lease_token uuid, has_context boolean,
    dependency_outputs jsonb
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
        RETURN QUERY SELECT ours, c.* FROM mge_claim_atoms(p_executor, p_claim_limit, p_lease_s, p_pool) c;
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
