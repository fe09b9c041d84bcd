"""The error every `bn-repro` command turns into a one-line message and exit status 2.

Kept apart from the modules that raise it, so that the command line can catch it before it has
imported any of them (torch, DALI and matplotlib take seconds to import)."""

import errno


class UserError(Exception):
    """Bad input the user must fix: the message names what is wrong, where, and what to do."""


# What to do about the operating system's refusals a user can fix, by errno name.
OS_ADVICE = {
    "ENOSPC": "the disk is full: free space there, or write somewhere else",
    "EDQUOT": "the disk quota is used up: free space there, or write somewhere else",
    "EROFS": "the file system is read-only: choose a writable place",
    "EACCES": "permission denied: choose a place you may write to, or change its permissions",
    "EPERM": "permission denied: choose a place you may write to, or change its permissions",
    "ENOTDIR": "a part of the path is a file, not a folder: choose another path",
    "EISDIR": "it is a folder, where a file was expected: choose another path",
    "EEXIST": "something is already there: remove it, or choose another path",
    "ENOENT": "it does not exist: check the path",
}


def explain_os_error(error: OSError) -> str:
    """An OSError as the path it concerns, what went wrong and what to do."""
    name = errno.errorcode.get(error.errno or 0, "")
    where = error.filename if error.filename is not None else "(no path)"
    advice = OS_ADVICE.get(name, "check the path and the disk, then run the command again")
    return f"{where}: {error.strerror or error} ({advice})"
