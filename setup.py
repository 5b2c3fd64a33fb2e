from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="atlas",
    version="0.1.0",
    description="Turn an LLM agent's runtime traces into better checkpoints: GRPO, GKD, adaptive teaching.",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["atlas", "atlas.*"]),
    # the embedded default's tokenizer and tiny checkpoints (atlas/embedded/models): a first run starts at once
    package_data={"atlas.embedded": ["models/*.json", "models/*/*.json", "models/*/*.safetensors"]},
    entry_points={"console_scripts": ["atlas=atlas.cli:main"]},
    install_requires=[
        "torch>=2.6",
        "safetensors>=0.4.3",
        "tokenizers>=0.20",
        "huggingface-hub>=0.24",
        "numpy>=1.26",
        "pyyaml>=6.0",
        "psycopg[binary]>=3.1",
        # chat templates are Jinja; transformers renders them with jinja2's sandbox too.
        "jinja2>=3.1",
        'triton>=3.0; platform_system == "Linux"',
    ],
    extras_require={
        # transformers and trl are references for tests and benchmarks only; atlas never imports them.
        "dev": [
            "pytest>=8",
            "hypothesis>=6.100",
            "transformers>=5.0",
            "trl>=1.0",
            "ruff>=0.6",
            "psutil>=5.9",
            "matplotlib>=3.7",
        ],
        "flash": ["flash-attn>=2.6"],
        "plot": ["matplotlib>=3.7"],
        "wandb": ["wandb>=0.16"],
    },
)
