"""The one exception type users see.

Every failure caused by the user's input (a model name, a file, a folder, an option value) is raised as
`VWTError` with a single line that names the thing and the fix. The CLI prints it without a traceback.
"""


class VWTError(Exception):
    """A problem with the user's input, explained in one line."""


class OpLibraryMissing(VWTError):
    """The vwt ONNX Runtime op library is not built: graphs with vwt custom ops cannot run (their portable twins can)."""
