"""tuneship.train: turn a dataset of examples into a LoRA adapter (transformers + peft + trl)."""
