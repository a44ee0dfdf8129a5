"""One exception type for problems with the user's input (files, flags, checkpoints).

The CLI prints these as ``gridcam: error: <message>`` with exit status 2 and no traceback; anything
else is a bug and keeps its traceback.
"""


class GridcamError(Exception):
    """Bad user input: the message names the file or value and says what to do."""
