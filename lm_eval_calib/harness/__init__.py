"""Thin glue between the metric core and lm-evaluation-harness (tasks, aggregations, stderr)."""
