"""How much of Nexus's second-order term survives bfloat16 numerics (README.md)."""
