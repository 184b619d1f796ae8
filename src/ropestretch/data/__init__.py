"""Data: reading text, packing, chat rendering (:mod:`.corpus`) and synthetic retrieval tasks (:mod:`.tasks`)."""

from ropestretch.data.corpus import (
    CHAT_TEMPLATE,
    PackReport,
    builtin_documents,
    chat_samples,
    load_records,
    pack_token_streams,
    render_conversation,
    sentences,
    text_samples,
    train_tokenizer,
)

__all__ = ["CHAT_TEMPLATE", "PackReport", "builtin_documents", "chat_samples", "load_records",
           "pack_token_streams", "render_conversation", "sentences", "text_samples", "train_tokenizer"]
