"""Trace ids and correlation: one trace_id per Masterplan, carried everywhere."""
