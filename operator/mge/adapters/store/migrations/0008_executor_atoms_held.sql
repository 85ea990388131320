-- Atoms each executor holds (claimed, not finished), not only its LLM calls in flight: the scaler removes only
-- executors that hold none, and ranks the others' pods by it for the ReplicaSet (pod-deletion-cost).
ALTER TABLE executor_status ADD COLUMN atoms_held integer NOT NULL DEFAULT 0;
