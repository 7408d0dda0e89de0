"""``python -m lm_eval_calib_train sft ...`` = ``lm-eval-calib train sft ...``."""

import sys

from lm_eval_calib_train.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
