"""Reports from lm-eval output folders: leaderboard tables and reliability diagrams (first step)."""
