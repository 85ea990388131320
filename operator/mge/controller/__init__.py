"""kopf handlers: thin shells that read state, call the pure core, and apply its decision."""
