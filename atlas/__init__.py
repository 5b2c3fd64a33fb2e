"""atlas: turn an LLM agent's runtime traces into better model checkpoints.

Subpackages: `atlas.model` (hand-written Qwen2/Qwen3/Llama, HF checkpoints in and out, tokenizer),
`atlas.sampler`, `atlas.kernels`, `atlas.data`, `atlas.reward`. See DESIGN.md for the dataflow.
"""

__version__ = "0.1.0"
