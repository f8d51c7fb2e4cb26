"""Judging answers: preference sets for DPO from model judges (``judge compare | rank``) and from human
feedback in the demo (``judge export``)."""
