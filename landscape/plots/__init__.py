"""Figures drawn from stored results only; no training or evaluation here."""
