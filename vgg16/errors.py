"""The one exception type for mistakes a user can fix; the entry point prints it as one line."""


class UsageError(Exception):
    """Bad input: a flag, a path, a dataset or a checkpoint that cannot be used as given.

    The message names what is wrong and what to do; `train_vgg16.py` prints it without a traceback.
    """
