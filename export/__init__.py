"""tuneship.export: merge an adapter into its base and save checked safetensors or one checked GGUF file."""
