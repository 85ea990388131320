"""Pure planning: atoms -> dependency DAG -> waves, critical path, plan errors, estimates."""
