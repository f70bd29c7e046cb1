"""Inputs: images, prompt templates, conversations, the batch processor, tokenizers and video frames."""

from .conversation import build_conversation_input_ids, check_context, count_positions
from .errors import (
    ContextLengthError,
    ConversationError,
    ImageInputError,
    ProcessingError,
    TemplateError,
    TokenizerError,
)
from .image import load_image, preprocess_image, to_rgb
from .image_processor import CogvlmImageProcessor
from .processor import CogvlmProcessor, ProcessorLayout
from .tokenizer import load_tokenizer

__all__ = [
    "CogvlmImageProcessor", "CogvlmProcessor", "ContextLengthError", "ConversationError", "ImageInputError",
    "ProcessingError", "ProcessorLayout", "TemplateError", "TokenizerError", "build_conversation_input_ids",
    "check_context", "count_positions", "load_image", "load_tokenizer", "preprocess_image", "to_rgb",
]
