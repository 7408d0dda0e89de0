"""``lm-eval-calib study STUDY.yaml``: the whole pipeline: train, evaluate, report, findings."""
