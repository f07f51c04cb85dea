"""tuneship.serve: run vLLM with a base model and LoRA adapters behind OpenAI-compatible endpoints."""
