"""Small Llama-family model folders for tests and benchmarks.

One factory for the tiny config every test and benchmark starts from, and one
function that turns a config into a loadable folder (config.json plus the bundled
SmolLM2 tokenizer files). Weights are either absent (``--load-format dummy``) or
written by the caller.
"""

import os
import shutil
from typing import Any

from vllm.transformers_utils.model_resolver import DEFAULT_MODEL, resolve_model

# Tokenizer files that make a folder loadable by AutoTokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")

# The shape tests and the control-plane benchmark share: big enough for GQA and
# TP=2, small enough that a forward pass costs almost nothing. The vocabulary
# fits in SmolLM2's tokenizer, whose ids 1 and 2 are BOS and EOS.
TINY_LLAMA = dict(
    vocab_size=1024,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
)


def tiny_config(config_class: str = "LlamaConfig", **overrides: Any) -> Any:
    """A transformers config of the tiny shape; ``overrides`` change any field."""
    import transformers

    cls = getattr(transformers, config_class)
    arch = config_class.replace("Config", "ForCausalLM")
    return cls(**{**TINY_LLAMA, "architectures": [arch], **overrides})


def write_model_folder(out_dir: str, config: Any) -> str:
    """config.json and the bundled tokenizer's files in ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    config.save_pretrained(out_dir)
    source = resolve_model(DEFAULT_MODEL)
    for name in TOKENIZER_FILES:
        path = os.path.join(source, name)
        if os.path.exists(path):
            shutil.copy(path, out_dir)
    return out_dir
