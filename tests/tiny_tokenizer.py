"""A character-level tokenizer with a chat template, built in memory (no download), sized for tiny_models.VOCAB."""

from __future__ import annotations

import string

from tiny_models import VOCAB
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIALS = ["<s>", "</s>", "<pad>", "<unk>"]  # ids 0, 1 match tiny_models' bos/eos
CHARS = string.digits + string.ascii_lowercase + string.ascii_uppercase + " \n.,:?!'\"-+*/=()%$#"
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def tiny_tokenizer(chars: str = CHARS) -> PreTrainedTokenizerFast:
    """The tokenizer; ``chars`` in another order gives one of the same size whose vocabulary differs."""
    vocab = {token: i for i, token in enumerate(SPECIALS + list(chars))}
    assert len(vocab) <= VOCAB
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
