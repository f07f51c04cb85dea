"""``python -m tuneship.entrypoints.cli`` (what torchrun and accelerate launch run)."""

from tuneship.entrypoints.cli import main

main()
