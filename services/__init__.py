"""The four PORTline services."""
