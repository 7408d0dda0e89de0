"""The single exception type raised for bad metric inputs.

Subclassing ``ValueError`` keeps ordinary ``except ValueError`` handlers working, while a dedicated class lets
the CLI tell "your data is malformed" apart from bugs.  Every message names the offending detail and the fix,
because these errors usually surface far from the code that produced the bad numbers.
"""


class CalibrationInputError(ValueError):
    """Metric input that cannot be scored; the message says what is wrong and how to fix it."""
