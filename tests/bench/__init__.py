"""Benchmarks (`make bench`): not tests; pytest collects nothing here."""
