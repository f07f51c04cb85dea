"""The seed guide's fine-tuning recipe, written as a tutorial would: TRL + PEFT + bitsandbytes.

    .venv/bin/python bench/recipe_sft.py --base DIR --data text.jsonl --out DIR [--save-steps N]

QLoRA: the base loaded in 4-bit NF4 (double quantization, bf16 compute), LoRA r=16, alpha 32,
dropout 0.05 on all linear layers, learning rate 2e-4 constant, batch 4, one epoch, bf16
autocast, on plain ``text`` rows (the chat rendered with the template, so the loss falls on
every token). Saves the adapter and tokenizer to ``--out`` and writes ``--out/result.json``:
trained tokens, training seconds, steps, trainable parameters. bench/train_quality.py runs it
as one arm, in its own process (its peak memory is this process's).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="base model directory")
    parser.add_argument("--data", required=True, help="JSONL of {'text': ...} rows")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--save-steps", type=int, default=0, help="also checkpoint every N steps (0: no)")
    args = parser.parse_args()

    import torch
    from datasets import load_dataset
    from peft import LoraConfig, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(args.base)
    bnb = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    device_map = None if torch.cuda.is_available() else {"": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(args.base, quantization_config=bnb, device_map=device_map)
    model = prepare_model_for_kbit_training(model)
    peft_config = LoraConfig(
        task_type="CAUSAL_LM", r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear"
    )
    training_args = SFTConfig(
        output_dir=str(args.out / "checkpoints"),
        num_train_epochs=1,
        per_device_train_batch_size=4,
        learning_rate=2e-4,
        lr_scheduler_type="constant",
        bf16=True,
        max_length=512,
        logging_steps=1,
        save_strategy="steps" if args.save_steps else "no",
        save_steps=args.save_steps or 500,
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=load_dataset("json", data_files=args.data, split="train"),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    trainer.save_model(str(args.out / "adapter"))
    tokenizer.save_pretrained(str(args.out / "adapter"))
    history = trainer.state.log_history
    result = {
        "num_tokens": max((e["num_tokens"] for e in history if "num_tokens" in e), default=None),
        "train_seconds": round(seconds, 2),
        "steps": trainer.state.global_step,
        "train_loss": next((e["train_loss"] for e in reversed(history) if "train_loss" in e), None),
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
    }
    (args.out / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
