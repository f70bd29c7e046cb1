"""Inputs: images, prompt templates, conversations, the batch processor, tokenizers and video frames.

The names below load on first use (PEP 562): ``coglens.processing.template`` and ``.errors`` stay light to import.
"""

from coglens._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    ".conversation": ("build_conversation_input_ids", "check_context"),
    ".errors": ("ContextLengthError", "ConversationError", "ImageInputError", "ProcessingError", "TemplateError",
                "TokenizerError"),
    ".image": ("load_image", "preprocess_image", "to_rgb"),
    ".image_processor": ("CogvlmImageProcessor",),
    ".processor": ("CogvlmProcessor", "ProcessorLayout"),
    ".tokenizer": ("load_tokenizer",),
})
