"""The root of errors whose message is meant for the user (printed without a traceback)."""


class LineqcError(Exception):
    """Bad input or state, named in the message together with the reason."""
