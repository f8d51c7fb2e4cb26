"""Inference and evaluation: metrics (pure functions in ``metrics``), statistics (``stats``) and the
scoring of prediction items under a named profile (``evaluate``)."""
