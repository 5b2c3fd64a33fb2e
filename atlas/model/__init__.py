"""Hand-written Llama 3.x / Qwen2 / Qwen3 decoders, HF checkpoints in and out, and the tokenizer.

    import atlas.model as am
    model = am.from_pretrained(path_or_hub_id, dtype=None, device=None)
    logits_BTV = model(input_ids_BT)
    am.save_pretrained(model, out_dir, tokenizer=tok)
    tok = am.Tokenizer.from_pretrained(path_or_hub_id)
"""

from atlas.model.config import ModelConfig
from atlas.model.tokenizer import Tokenizer
from atlas.model.transformer import KVCache, Transformer
from atlas.model.weights import from_pretrained, save_pretrained

__all__ = ["KVCache", "ModelConfig", "Tokenizer", "Transformer", "from_pretrained", "save_pretrained"]
