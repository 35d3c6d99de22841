"""T5 text encoder, tokenization and prompt rules. `transformers` is imported only when used."""
from cosmos_dist.text.prompt_rules import check_prompt, count_tokens, word_count
from cosmos_dist.text.t5 import MAX_LENGTH, T5_SUBDIR, T5TextEncoder, load_t5_tokenizer, t5_dir
from cosmos_dist.text.tiny import write_tiny_t5

__all__ = [
    "MAX_LENGTH",
    "T5TextEncoder",
    "T5_SUBDIR",
    "check_prompt",
    "count_tokens",
    "load_t5_tokenizer",
    "t5_dir",
    "word_count",
    "write_tiny_t5",
]
