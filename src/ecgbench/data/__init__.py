"""Corpora -> segment store -> conversation sets: readers, signal processing, the store, mapping, splits."""
