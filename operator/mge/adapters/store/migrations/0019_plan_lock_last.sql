-- The plan row's lock taken last in an attempt's write, by a statement of its own, in the mode an UPDATE takes;
-- and a write wakes the executors whenever it leaves ready an atom it made ready.
--
-- Every write and reservation of a plan waits for its row's lock, and a write held it from its settlement,
-- its first statement, through the atom's rows, the claim of the next atoms and the commit. When a wave's
-- atoms end together their writes queued for it one behind the other (pg_stat_statements: 13.7 ms of a
-- 14.7 ms write spent waiting, 50 atoms a level). Now a write does its atoms' work first (the attempt, the
-- atom, its dependents, the claim) and takes the plan row only for the money: the settlement, then the
-- claimed atoms' reservations, then the commit. Holding the plan row, it touches no row another write could
-- hold.
--
-- The lock is taken by a `PERFORM ... FOR NO KEY UPDATE` before the settlement: waiting for it inside the
-- settlement's statement, which then updates the row, deadlocked writes of the same wave with each other once
-- they held atom rows. `FOR NO KEY UPDATE` is the mode of the UPDATEs that follow; `FOR UPDATE` would also
-- block the `FOR KEY SHARE` of every foreign key check on the plan.
--
-- A write that made atoms ready and left them (no slot to claim them with) used to wake nobody when the plan
-- had other atoms ready as it began. An executor could claim those while the write was under way, before
-- its atoms were ready; they then waited for some executor's next write or poll. Now it also wakes them when
-- one of the atoms ready as it began (up to 64 of them) was claimed meanwhile. Not for every atom left: each
-- notification costs every listening executor process a transaction.

CREATE TYPE mge_claimed_atom AS (
    masterplan_id uuid, atom_id text, trace_id uuid, file text, language text, description text,
    depends_on text[], wave_index int, attempts int, max_attempts int, model text, estimated_tokens int,
    claims int, priority int, plan_priority int, lease_token uuid, has_context boolean,
    dependency_outputs jsonb
);

-- A call's settlement, its plan row already locked by the caller: the reservation deleted, spent and reserved
-- moved, the `settle` event and, when this call crossed it, `soft_cap`. Without a reservation, nothing.
CREATE FUNCTION mge_settle_locked(
    p_reservation bigint, p_plan uuid, p_amount numeric, p_prompt_tokens int, p_completion_tokens int,
    p_cached_tokens int, p_atom text, p_wave int, p_model text, p_detail jsonb
) RETURNS void
LANGUAGE sql VOLATILE AS $$
WITH held AS (
    DELETE FROM cost_reservations WHERE id = p_reservation
    RETURNING amount_usd
), spend AS (
    UPDATE masterplans
    SET current_cost_usd = current_cost_usd + p_amount,
        reserved_cost_usd = reserved_cost_usd - coalesce((SELECT amount_usd FROM held), 0), updated_at = now()
    WHERE id = p_plan AND p_reservation IS NOT NULL
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

-- The ledger's own settlement: the plan row locked by a statement of its own, then the settlement.
CREATE OR REPLACE FUNCTION mge_settle(
    p_reservation bigint, p_plan uuid, p_amount numeric, p_prompt_tokens int, p_completion_tokens int,
    p_cached_tokens int, p_atom text, p_wave int, p_model text, p_detail jsonb
) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF p_reservation IS NULL THEN
        RETURN;
    END IF;
    PERFORM 1 FROM masterplans WHERE id = p_plan FOR NO KEY UPDATE;
    PERFORM mge_settle_locked(p_reservation, p_plan, p_amount, p_prompt_tokens, p_completion_tokens,
                              p_cached_tokens, p_atom, p_wave, p_model, p_detail);
END
$$;

CREATE OR REPLACE FUNCTION mge_give_back_claim_reservations(
    p_plan uuid, p_atom text, p_lease_token uuid, p_why text
) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF p_lease_token IS NULL OR NOT EXISTS (SELECT 1 FROM cost_reservations r WHERE r.masterplan_id = p_plan
                                            AND r.atom_id = p_atom AND r.lease_token = p_lease_token) THEN
        RETURN;
    END IF;
    PERFORM 1 FROM masterplans WHERE id = p_plan FOR NO KEY UPDATE;
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

-- As in 0018 (the same arguments and rows), in this order: the atom's rows (its count and attempt row, its
-- end, its dependents made ready), the claim of the next atoms, then the plan row: the settlement and each
-- claimed atom's reservation. Other executors are woken as above.
CREATE OR REPLACE FUNCTION mge_finish_attempt(
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
    ready_before text[];
    taken mge_claimed_atom[];
BEGIN
    ready_before := ARRAY(SELECT w.atom_id FROM atoms w WHERE w.masterplan_id = p_plan AND w.state = 'ready' LIMIT 64);
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

    IF p_claim_limit > 0 THEN  -- a statement of its own: it sees the dependents just made ready
        SELECT array_agg(ROW(c.*)::mge_claimed_atom) INTO taken
        FROM mge_claim_atoms(p_executor, p_claim_limit, p_lease_s, p_pool) c;
    END IF;
    -- Sent at the commit; asked before the plan row is locked, as nothing after changes the answer.
    IF EXISTS (SELECT 1 FROM atoms a WHERE a.masterplan_id = p_plan
               AND a.atom_id = ANY(made_ready) AND a.state = 'ready')
       AND (cardinality(ready_before) = 0
            OR EXISTS (SELECT 1 FROM unnest(ready_before) r(atom_id) WHERE NOT EXISTS (
                SELECT 1 FROM atoms b WHERE b.masterplan_id = p_plan AND b.atom_id = r.atom_id AND b.state = 'ready'))) THEN
        PERFORM pg_notify('mge_atoms_ready', '');
    END IF;

    IF p_reservation IS NOT NULL OR (taken IS NOT NULL AND p_reserve_usd IS NOT NULL) THEN
        PERFORM 1 FROM masterplans WHERE id = p_plan FOR NO KEY UPDATE;
    END IF;
    IF p_reservation IS NOT NULL THEN  -- a cache hit's write has nothing to settle
        PERFORM mge_settle_locked(p_reservation, p_plan, p_amount, p_prompt_tokens, p_completion_tokens,
                                  p_cached_tokens, p_atom, p_wave, p_model, p_detail);
    END IF;
    IF taken IS NOT NULL THEN
        RETURN QUERY
        SELECT ours, c.*,
               CASE WHEN p_reserve_usd IS NOT NULL AND c.masterplan_id = p_plan AND c.claims = 1 THEN
                   mge_reserve_if_room(p_plan, c.atom_id, c.trace_id, p_executor, p_reserve_usd, p_reserve_ttl_s,
                                       c.lease_token, c.wave_index, c.model)
               END
        FROM unnest(taken) c;
    END IF;
    IF taken IS NULL THEN
        still_ours := ours;
        RETURN NEXT;
    END IF;
END
$$;

-- The executor loop's claim, reserving as an attempt's write does: each atom it claims, on its first claim, of
-- a plan in `p_reserve_plans` comes with `p_reserve_usd` (the same position) reserved for its call
-- (`reservation_id`; NULL: none, the executor reserves as before). Each such atom used to be reserved by a
-- transaction of its own before its call. The atoms are claimed first, then the plan rows locked in the
-- order of their ids (two claims reserving in the same plans never wait for each other in a cycle).
CREATE FUNCTION mge_claim_atoms_reserving(
    p_executor text, p_limit int, p_lease_s float8, p_pool text, p_reserve_plans uuid[], p_reserve_usd numeric[],
    p_reserve_ttl_s float8
)
RETURNS TABLE (
    masterplan_id uuid, atom_id text, trace_id uuid, file text, language text, description text,
    depends_on text[], wave_index int, attempts int, max_attempts int, model text, estimated_tokens int,
    claims int, priority int, plan_priority int, lease_token uuid, has_context boolean,
    dependency_outputs jsonb, reservation_id bigint
)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    taken mge_claimed_atom[];
BEGIN
    SELECT array_agg(ROW(c.*)::mge_claimed_atom) INTO taken
    FROM mge_claim_atoms(p_executor, p_limit, p_lease_s, p_pool) c;
    IF taken IS NULL THEN
        RETURN;
    END IF;
    PERFORM 1 FROM masterplans m
    WHERE m.id IN (SELECT c.masterplan_id FROM unnest(taken) c WHERE c.claims = 1 AND c.masterplan_id = ANY(p_reserve_plans))
    ORDER BY m.id
    FOR NO KEY UPDATE;
    RETURN QUERY
    SELECT c.*,
           CASE WHEN r.amount IS NOT NULL AND c.claims = 1 THEN
               mge_reserve_if_room(c.masterplan_id, c.atom_id, c.trace_id, p_executor, r.amount, p_reserve_ttl_s,
                                   c.lease_token, c.wave_index, c.model)
           END
    FROM unnest(taken) c
    LEFT JOIN unnest(p_reserve_plans, p_reserve_usd) AS r(plan_id, amount) ON r.plan_id = c.masterplan_id;
END
$$;
