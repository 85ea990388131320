"""Pure code generation logic: prompts from atoms, code extraction from answers, syntax validation."""
