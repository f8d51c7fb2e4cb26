"""Retrieval over a segment store: per-lead ECG features, faiss index, leakage rule, context insertion."""
