"""Where the paper's Eq. 9 and Eq. 12 differ, checked numerically (README.md)."""
