"""One bf16 GRPO training step on CUDA: NCCL, FSDP2 mixed precision, the Triton kernels, the compiled
sampler path, all together (run by tests/test_gpu.py under torchrun; it writes its findings as JSON)."""

import json
import os
import sys

import torch

import atlas.distributed as ad
import atlas.kernels as K
import atlas.model as am
from atlas.embedded import model_path, task
from atlas.reward import answer_match
from atlas.rl import GRPO, GRPOConfig
from atlas.train.metrics import read_metrics


def main(out: str) -> None:
    K.set_backend("triton")
    ad.init()
    try:
        path = model_path("student")
        model = ad.load_pretrained(path, param_dtype=torch.bfloat16)
        ref = ad.load_pretrained(path, param_dtype=torch.bfloat16)
        config = GRPOConfig(output_dir=os.path.join(os.path.dirname(out), "run"), max_steps=2, lr=1e-4,
                            prompts_per_step=4, num_generations=4, max_new_tokens=12, param_dtype="bfloat16",
                            micro_batch_size=16, beta=0.04)
        trainer = GRPO(model, am.Tokenizer.from_pretrained(path), answer_match, config, ref_model=ref)
        result = trainer.train(task.examples("train")[:64])
        if ad.is_main():
            rows = read_metrics(os.path.join(config.output_dir, "metrics.jsonl"))
            report = {"result": {k: v for k, v in result.items() if isinstance(v, int | float | str)},
                      "rows": rows, "backend": ad.device().type,
                      "nccl": torch.distributed.get_backend() if torch.distributed.is_initialized() else None}
            with open(out, "w") as f:
                json.dump(report, f)
    finally:
        ad.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
