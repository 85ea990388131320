"""Pure concurrency decisions: executor replicas, per-executor limits, backpressure, ramp-up."""
