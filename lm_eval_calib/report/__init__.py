"""Reports from lm-eval output folders: leaderboard, reliability diagrams, held-out recalibration, breakdowns.

Entry point: :func:`lm_eval_calib.report.build.build_report` (``lm-eval-calib report``).
"""
