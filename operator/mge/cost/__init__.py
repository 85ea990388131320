"""Pure cost logic: prices, estimates, caps and the rules of the reservation ledger."""
