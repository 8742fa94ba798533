"""Allocation: choose a candidate per unit under a budget."""
