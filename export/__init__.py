"""tuneship.export: merge an adapter into its base model and save checked safetensors."""
