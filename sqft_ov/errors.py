"""What users see when something is off: `SqftError` and its few subclasses (a message that names the fix,
printed as one line by the CLI), and the warning an old option spelling prints."""

import sys


class SqftError(Exception):
    """Bad input or an impossible request. The message says what is wrong and how to fix it.

    Every error sqft-ov raises on purpose is one of these (the CLI prints it as one line); the subclasses
    below let a caller catch one kind. Errors that fit none of them are raised as SqftError itself.
    """


class ConfigError(SqftError, ValueError):
    """An option value, or a combination of options, that cannot work (e.g. a negative --lr)."""


class ModelFolderError(SqftError):
    """A model path that is missing or not a usable model: no folder or file, no weights, no linear layers,
    a bad GGUF file, or a Hub ID that does not resolve."""


class AdapterMismatchError(SqftError):
    """An adapter that does not belong to the base it is applied to (fingerprint, shapes or method differ)."""


class NncfInternalsChanged(SqftError):
    """The installed NNCF no longer has an internal that `sqft_ov.adapters.qa_lora` relies on."""


class ExportIntegrityError(SqftError):
    """An OpenVINO IR, or an export's result, fails a check (missing or mismatched files, lost zeros)."""


def warn_deprecated(old: str, new: str) -> None:
    """An old spelling still works (it is in users' scripts) but says, on stderr, what replaced it."""
    print(f"warning: {old} is deprecated: use {new}", file=sys.stderr, flush=True)
