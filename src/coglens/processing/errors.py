"""Errors raised while turning user input (images, prompts, tokenizers) into model input.

Every one is a ``ValueError``: each means the caller passed something we cannot use, and the message says
what, where, and what to do instead.
"""

from __future__ import annotations


class ProcessingError(ValueError):
    """Base class of every input-processing error."""


class ImageInputError(ProcessingError):
    """An image that cannot be used: base class of the specific image errors below."""


class ImageNotFoundError(ImageInputError):
    """The image path does not exist or is not a file."""


class ImageDecodeError(ImageInputError):
    """The data is not an image, or the image is corrupt or truncated."""


class ImageModeError(ImageInputError):
    """The image's pixel mode has no conversion to RGB."""


class ImageTooLargeError(ImageInputError):
    """The image has more pixels than allowed (a possible decompression bomb); refused before decoding.

    ``pixels`` is the width x height its header declares, when known, so a caller with several limits (a server's
    per-image and per-request budgets) can tell which one refused it.
    """

    def __init__(self, message: str, *, pixels: int | None = None) -> None:
        super().__init__(message)
        self.pixels = pixels


class TemplateError(ProcessingError):
    """Unknown prompt template name."""


class ConversationError(ProcessingError):
    """A query, history or image list that does not fit the prompt format."""


class ContextLengthError(ProcessingError):
    """The prompt (plus the tokens to generate) needs more positions than the model has.

    ``param`` names the setting that asked for too many new tokens (None: the prompt alone is too long).
    """

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class TokenizerError(ProcessingError):
    """Base class of tokenizer loading errors."""


class TokenizerNotFoundError(TokenizerError):
    """No tokenizer files where we looked."""


class VocabularyMismatchError(TokenizerError):
    """The tokenizer can produce ids that the model's embedding table does not have."""
