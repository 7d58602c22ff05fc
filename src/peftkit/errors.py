"""Exception types for user mistakes: the CLI prints them as one red line and exits non-zero.

Anything that is *not* a PeftkitError is a bug in peftkit (or a library) and keeps its traceback.
"""

from __future__ import annotations


class PeftkitError(Exception):
    """A problem the user can act on: the message says what is wrong and where."""


class RecipeError(PeftkitError):
    """A recipe file or override is malformed, has an unknown key, or a bad value."""


class CatalogError(PeftkitError):
    """An unknown built-in name, a missing local folder, or a model hub that cannot be reached."""


class DataError(PeftkitError):
    """A data file that cannot be read or whose records are not what the task needs."""


class RunDirError(PeftkitError):
    """A run directory is missing a stage's output (e.g. `eval` before `train`)."""


class ParityError(PeftkitError):
    """A merged model's outputs differ from the adapter model's beyond the tolerance."""


class ForgettingGateError(PeftkitError):
    """The tuned model lost more general ability than `eval.max_forgetting` allows."""


class VerdictGateError(PeftkitError):
    """A gate of `eval.fail_on` failed: a degenerate (collapsed) model, or a verdict other than "yes"."""


class MergeError(PeftkitError):
    """An adapter cannot be folded into the base model's weights, or a merged model cannot be (re)quantized here."""


class AdapterRefused(PeftkitError):
    """`peftkit serve` will not serve an adapter; the reason names the file and what was expected."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"adapter '{name}': {reason}")
        self.name = name
        self.reason = reason


class ExportError(PeftkitError):
    """A run cannot be exported for a serving engine as it is (e.g. vLLM refuses DoRA); the message lists every reason."""


class KeysFileError(PeftkitError):
    """A `peftkit serve --keys` file is unreadable or malformed (names the file, the entry `keys[i]` and the field)."""


class RegistryError(PeftkitError):
    """A registry reference, version, alias or gate is not what a registry command needs (names it)."""


class TamperError(RegistryError):
    """A stored file, signature, provenance or audit entry no longer matches what was recorded: names the file
    (or the audit entry's position), both hashes, and what to do."""


class ResumeError(RunDirError):
    """`peftkit train --resume RUN` cannot continue RUN as asked: a recipe field or the process count differs from
    the run's, the run has finished, or a checkpoint is damaged (names the field, file or count)."""


class TrainingInterrupted(PeftkitError):
    """Training stopped on SIGTERM after saving a checkpoint; the message says where and how to resume."""
