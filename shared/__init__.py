"""Contracts and plumbing shared by the PORTline services (no business rules live here)."""
