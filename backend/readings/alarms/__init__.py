"""Abnormal meters (异常水表): alarm rules, set-based evaluation and alarm records."""
