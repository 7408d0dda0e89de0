"""Glue between the core (records, metrics, options) and lm-evaluation-harness: the task classes, the checks
before inference, and ``calib_<task>`` wrappers of lm-eval's own tasks (layers: docs/architecture.md)."""
