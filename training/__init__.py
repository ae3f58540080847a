"""Offline side of skipvit: data, training loops, searches, evaluation and reports."""
