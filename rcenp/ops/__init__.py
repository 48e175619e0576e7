"""Differentiable operations, one family per module; ``rcenp.functional`` re-exports them."""
