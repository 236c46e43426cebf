"""Analyses over models and recorded runs: each a plain function returning a tidy result."""
