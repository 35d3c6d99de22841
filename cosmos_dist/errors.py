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


def error_reason(exc: BaseException) -> str:
    """One line for a manifest or log: our own messages as they are (they already say what to fix),
    anything else prefixed with its type, which is then the only hint of where it came from."""
    return str(exc) if isinstance(exc, CosmosDistError) else f"{type(exc).__name__}: {exc}"


# ---- exit codes of `cosmos-dist generate` (and generate.py); README "Exit codes" --------------------------
#: every sample of the run's share is done, skipped as already done, or blocked by the guardrails
EXIT_OK = 0
#: the run went through its share but some samples failed (reasons in manifest.jsonl)
EXIT_SAMPLES_FAILED = 1
#: a configuration or input error stopped the run before it started (one `error:` line says which and how to fix it)
EXIT_USAGE = 2
#: stopped before its share was finished (Ctrl-C, SIGTERM, Slurm's USR1 warning or the stop file, or under torchrun
#: a lost or hung rank or a failed collective): nothing is recorded failed, a rerun continues; `cosmos-dist
#: shard-status` exits with the same code while samples are pending
EXIT_INTERRUPTED = 3
#: refused before any model loaded: another live process holds the lease of this shard (or `prompt=` sample),
#: so a second copy would make the same samples (pipeline/lease.py); nothing was written
EXIT_SHARD_BUSY = 4
