"""Pure core of the caches and the batcher: keys, cacheability, similarity, batch prompts and payoff (no I/O)."""
