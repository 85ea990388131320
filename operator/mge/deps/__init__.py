"""File-level dependency graphs of generated Python and TypeScript projects, and their check against a plan."""
