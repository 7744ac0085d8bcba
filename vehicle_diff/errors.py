"""The one exception type the command line turns into a plain message instead of a traceback."""


class UserInputError(Exception):
    """Bad input from the user (file, flag, preset, model id): the message names it and says what to do."""
