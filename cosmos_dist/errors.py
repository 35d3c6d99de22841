"""Errors a user can act on.

Anything raised as a `CosmosDistError` is printed by the CLI as one clear message (what is wrong,
which field or file, and how to fix it) without a traceback. Everything else is a bug and keeps
its traceback.
"""


class CosmosDistError(Exception):
    """Base class: a problem with the user's input, configuration, files or environment."""


class ConfigError(CosmosDistError, ValueError):
    """A configuration value is invalid; the message names the field and the fix."""


class CheckpointError(CosmosDistError):
    """A checkpoint file is missing, unreadable, or does not match the requested model."""


class InputError(CosmosDistError, ValueError):
    """A prompt, prompts-file line or conditioning input is invalid."""


#: Exit code of a run that stopped before its work was done for a reason outside the samples: a lost or hung
#: rank, a failed collective, a stop signal. Nothing is recorded failed; resubmitting the run makes what is left.
EXIT_INTERRUPTED = 130
