"""Failure families and the exit code each one ends the program with.

`main()` turns any of these into one line on stderr; DLRD_DEBUG=1 adds the
traceback. The codes are documented in the README and checked by a test.
"""

EXIT_OK = 0
EXIT_CONFIG = 1
EXIT_USAGE = 2
EXIT_STARTUP = 3
EXIT_NOT_ACCEPTED = 4
EXIT_UNREACHABLE = 5

EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_CONFIG: "the configuration is invalid (file, section, key and reason on stderr)",
    EXIT_USAGE: "the command line is wrong",
    EXIT_STARTUP: "the daemon could not start, or a command could not open its data: a listen address or the "
                  "data files are unusable",
    EXIT_NOT_ACCEPTED: "send-test: the receiver answered, but not with HTTP 200 and Report 0",
    EXIT_UNREACHABLE: "send-test: the receiver could not be reached or did not answer HTTP",
}


class DlrdError(Exception):
    """A failure the operator can fix; the message says how."""

    exit_code = EXIT_STARTUP


class ConfigError(DlrdError):
    """The ini file or the environment holds something dlrd cannot run with."""

    exit_code = EXIT_CONFIG


class UsageError(DlrdError):
    """Arguments that parse but do not go together, or name something that is not there."""

    exit_code = EXIT_USAGE


class StartupError(DlrdError):
    """A resource the daemon needs at start (port, database, journal) is unusable."""

    exit_code = EXIT_STARTUP


class StorageUnavailable(Exception):
    """The receipt could not be made durable right now; the provider should retry."""
