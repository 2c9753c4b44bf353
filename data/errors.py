"""The project's own error: something the user gave (a flag, a file, a record, a checkpoint) is wrong.
train.py, sample.py and bench.py print its message and exit with code 2; any other exception is a
bug and keeps its traceback. It is a ValueError, so code that catches those still does."""


class UserError(ValueError):
    pass
