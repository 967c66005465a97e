"""Trainable anchor sets between endpoints: curves and simplexes (built on landscape)."""
