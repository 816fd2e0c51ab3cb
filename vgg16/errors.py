"""The one exception type for mistakes a user can fix; the entry point prints it as one line."""


class UsageError(Exception):
    """Bad input: a flag, a path, a dataset or a checkpoint that cannot be used as given.

    The message names what is wrong and what to do; `train_vgg16.py` prints it without a traceback.
    """


def one_line(error: BaseException) -> str:
    """The user-facing line of an error. A UsageError raised in a DataLoader worker comes back re-raised with
    the worker's traceback folded into its message; its own message is that traceback's last line."""
    text = str(error).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1]
        for prefix in ("vgg16.errors.UsageError: ", "UsageError: "):
            text = text.removeprefix(prefix)
    return text
