"""Generate the support-ticket triage example data set (seeded, reproducible).

Task: read a free-text customer support ticket and answer with one line of JSON
``{"category": ..., "priority": ..., "product": ...}``. Every answer is checkable
exactly, the base model does badly at it (it does not know the label set or the
output shape), and a short LoRA run learns it.

    python examples/make_tickets.py            # writes examples/tickets/*.jsonl

Outputs (train: 600 rows, eval: 150 held-out rows, disjoint ticket texts):
    tickets/train.jsonl           chat ``messages`` form
    tickets/eval.jsonl            chat ``messages`` form
    tickets/train.prompt.jsonl    ``prompt``/``completion`` form of the same rows
    tickets/eval.prompt.jsonl     ``prompt``/``completion`` form of the same rows
    tickets/train.pairs.jsonl     preference pairs (OpenAI's DPO format) of the same rows: the
    tickets/eval.pairs.jsonl      right answer preferred to one with a wrong priority
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SEED = 20261129
SYSTEM = (
    "Triage the support ticket. Reply with JSON only: "
    '{"category": billing|bug|shipping|account|feature, '
    '"priority": low|medium|high|urgent, "product": <product name>}'
)

PRODUCTS = [
    "Lumen Router X2",
    "AquaSense Thermostat",
    "PayPilot",
    "CloudVault Backup",
    "Orbit Earbuds",
    "TaskNest",
    "Brightline Monitor",
    "FleetTrack GPS",
]

ISSUES = {
    "billing": [
        "I was charged twice for {p} this month.",
        "My invoice for {p} shows the wrong amount.",
        "Why did the price of my {p} subscription go up without notice?",
        "The {p} renewal charged my old credit card.",
        "I need a receipt for my {p} purchase for my expense report.",
        "There is a charge from {p} on my statement that I do not recognise.",
    ],
    "bug": [
        "{p} keeps crashing whenever I open the settings page.",
        "After the latest update {p} no longer connects.",
        "{p} shows an error code E42 and then freezes.",
        "The sync feature in {p} loses my data every night.",
        "My {p} restarts by itself every few minutes.",
        "{p} displays the wrong time after the firmware update.",
    ],
    "shipping": [
        "My {p} order has not arrived and tracking has not moved in a week.",
        "The {p} I received was damaged in the box.",
        "I ordered a {p} but got a different item.",
        "Can you change the delivery address for my {p} order?",
        "The courier says the {p} package was delivered but it was not.",
    ],
    "account": [
        "I cannot log in to my {p} account even after resetting the password.",
        "Please update the email address on my {p} account.",
        "My {p} account got locked after too many attempts.",
        "How do I add a second user to our {p} account?",
        "I want to delete my {p} account and all my data.",
    ],
    "feature": [
        "It would be great if {p} had a dark mode.",
        "Could {p} support exporting reports to CSV?",
        "Please add a way to schedule tasks in {p}.",
        "I would love for {p} to integrate with my calendar.",
        "Any plans to let {p} work offline?",
    ],
}

URGENCY = {
    "low": [
        "No rush, whenever you get a chance.",
        "This is not urgent at all.",
        "Just letting you know, it can wait.",
        "",
    ],
    "medium": [
        "I would appreciate a reply this week.",
        "It is a bit annoying, please take a look.",
        "Let me know when you can.",
    ],
    "high": [
        "This is blocking my work today, please help soon.",
        "I need this fixed quickly, our team depends on it.",
        "Please prioritise this, it is affecting several customers.",
    ],
    "urgent": [
        "URGENT: our whole business is down because of this!",
        "This is an emergency, we are losing money every minute.",
        "Critical! Production is down, respond immediately.",
    ],
}

GREETINGS = ["Hi,", "Hello team,", "Hey there,", "Good morning,", "Dear support,", ""]
SIGNOFFS = ["Thanks, {n}", "Regards, {n}", "Cheers, {n}", "- {n}", "Best, {n}", ""]
NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jo", "Kofi", "Lena"]
ORDER_NOTE = ["", "", "Order #{o}.", "Ticket ref {o}.", "Account id {o}."]


def make_row(rng: random.Random) -> dict:
    """One ticket with its label; the text mixes greeting, issue, urgency and sign-off."""
    category = rng.choice(sorted(ISSUES))
    # feature requests are rarely urgent; keep the label distribution realistic
    priorities = ["low", "medium"] if category == "feature" else sorted(URGENCY)
    priority = rng.choice(priorities)
    product = rng.choice(PRODUCTS)
    parts = [
        rng.choice(GREETINGS),
        rng.choice(ISSUES[category]).format(p=product),
        rng.choice(ORDER_NOTE).format(o=rng.randint(10000, 99999)),
        rng.choice(URGENCY[priority]),
        rng.choice(SIGNOFFS).format(n=rng.choice(NAMES)),
    ]
    ticket = " ".join(p for p in parts if p)
    answer = json.dumps({"category": category, "priority": priority, "product": product})
    return {"ticket": ticket, "answer": answer, "category": category, "priority": priority}


def to_messages(row: dict) -> dict:
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": row["ticket"]},
            {"role": "assistant", "content": row["answer"]},
        ],
        "tags": [row["category"], row["priority"]],
    }


def to_prompt(row: dict) -> dict:
    return {"prompt": f"{SYSTEM}\n\nTicket: {row['ticket']}", "completion": row["answer"]}


def to_pair(row: dict, rng: random.Random) -> dict:
    """OpenAI's preference format: the right answer over the same JSON with another priority."""
    wrong = rng.choice([p for p in sorted(URGENCY) if p != row["priority"]])
    rejected = json.loads(row["answer"]) | {"priority": wrong}
    return {
        "input": {"messages": to_messages(row)["messages"][:2]},
        "preferred_output": [{"role": "assistant", "content": row["answer"]}],
        "non_preferred_output": [{"role": "assistant", "content": json.dumps(rejected)}],
    }


def generate(n_train: int, n_eval: int, seed: int = SEED) -> tuple[list[dict], list[dict]]:
    """Rows with unique ticket texts; eval texts never occur in train."""
    rng = random.Random(seed)
    seen: set[str] = set()
    rows: list[dict] = []
    while len(rows) < n_train + n_eval:
        row = make_row(rng)
        if row["ticket"] not in seen:
            seen.add(row["ticket"])
            rows.append(row)
    return rows[:n_train], rows[n_train:]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "tickets")
    parser.add_argument("--train", type=int, default=600, help="training rows")
    parser.add_argument("--eval", type=int, default=150, help="held-out rows")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    train, held_out = generate(args.train, args.eval, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    pairs = random.Random(args.seed + 1)  # its own stream: the other files stay as they were
    for split, rows in (("train", train), ("eval", held_out)):
        write_jsonl(args.out / f"{split}.jsonl", [to_messages(r) for r in rows])
        write_jsonl(args.out / f"{split}.prompt.jsonl", [to_prompt(r) for r in rows])
        write_jsonl(args.out / f"{split}.pairs.jsonl", [to_pair(r, pairs) for r in rows])
    print(f"wrote {len(train)} train and {len(held_out)} eval rows to {args.out}")


if __name__ == "__main__":
    main()
