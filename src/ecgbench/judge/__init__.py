"""Judging answers: preference sets for DPO from human feedback (``judge export``)."""
