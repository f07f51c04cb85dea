"""Generate the invoice-extraction example data set (seeded, reproducible).

Task: read a short e-mail about an invoice and answer with one line of JSON
``{"vendor": ..., "invoice": ..., "amount": ..., "currency": ..., "due": ...}``. Unlike the
ticket task (choose labels from a fixed set), this one copies spans out of the text and
normalises them: amounts written as ``$1,250.00``, ``1250 EUR`` or ``GBP 99.5`` become a
number and a currency code, dates written as ``14 March 2026`` or ``March 14, 2026`` become
``2026-03-14``. Every field is checkable exactly (``json_equal``, ``json_fields``).

    python examples/make_invoices.py            # writes examples/invoices/*.jsonl

Outputs (train: 600 rows, eval: 150 held-out rows, disjoint e-mail texts):
    invoices/train.jsonl           chat ``messages`` form
    invoices/eval.jsonl            chat ``messages`` form
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SEED = 20261201
SYSTEM = (
    "Extract the invoice fields from the e-mail. Reply with JSON only: "
    '{"vendor": <company>, "invoice": <invoice number>, "amount": <number>, '
    '"currency": USD|EUR|GBP, "due": <YYYY-MM-DD>}'
)

VENDORS = [
    "Acme Supplies",
    "Northwind Traders",
    "Blue Harbor Logistics",
    "Kestrel Software",
    "Granite Office Co",
    "Pinecrest Catering",
    "Solaris Energy",
    "Tandem Print Works",
    "Meridian Legal",
    "Copperleaf Design",
]
MONTHS = [
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
]  # fmt: skip
SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£"}

OPENERS = ["Hi,", "Hello,", "Dear accounts team,", "Good afternoon,", ""]
BODIES = [
    "Please find attached invoice {inv} from {vendor} for {money}, due on {date}.",
    "{vendor} has issued invoice {inv}. The total of {money} is payable by {date}.",
    "This is a reminder that invoice {inv} ({money}) from {vendor} must be paid by {date}.",
    "Our invoice {inv} for {money} is attached. Payment is due {date}. Thank you, {vendor}.",
    "Attached: {vendor} invoice no. {inv}, amount {money}, due date {date}.",
]
CLOSERS = ["Kind regards, {n}", "Thanks, {n}", "Best, {n}", "- {n}", ""]
NAMES = ["Priya", "Tom", "Mei", "Oscar", "Nadia", "Luis", "Greta", "Sam"]


def money(rng: random.Random, amount: float, currency: str) -> str:
    """The amount as people write it: symbol, code before or after, with or without thousands."""
    plain = f"{amount:.0f}" if amount == int(amount) and rng.random() < 0.5 else f"{amount:.2f}"
    grouped = f"{amount:,.2f}"
    return rng.choice(
        [
            f"{SYMBOLS[currency]}{grouped}",
            f"{grouped} {currency}",
            f"{currency} {plain}",
            f"{SYMBOLS[currency]}{plain}",
        ]
    )


def date_text(rng: random.Random, year: int, month: int, day: int) -> str:
    return rng.choice(
        [
            f"{year}-{month:02d}-{day:02d}",
            f"{day} {MONTHS[month - 1]} {year}",
            f"{MONTHS[month - 1]} {day}, {year}",
        ]
    )


def make_row(rng: random.Random) -> dict:
    """One e-mail with its fields."""
    vendor = rng.choice(VENDORS)
    invoice = rng.choice(["INV-", "#", "A", ""]) + str(rng.randint(1000, 99999))
    currency = rng.choice(sorted(SYMBOLS))
    amount = round(rng.choice([rng.uniform(20, 999), rng.uniform(1000, 25000)]), rng.choice([0, 2]))
    year, month, day = 2026, rng.randint(1, 12), rng.randint(1, 28)
    body = rng.choice(BODIES).format(
        inv=invoice, vendor=vendor, money=money(rng, amount, currency), date=date_text(rng, year, month, day)
    )
    parts = [rng.choice(OPENERS), body, rng.choice(CLOSERS).format(n=rng.choice(NAMES))]
    fields = {
        "vendor": vendor,
        "invoice": invoice,
        "amount": amount,
        "currency": currency,
        "due": f"{year}-{month:02d}-{day:02d}",
    }
    return {"email": " ".join(p for p in parts if p), "answer": json.dumps(fields)}


def to_messages(row: dict) -> dict:
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": row["email"]},
            {"role": "assistant", "content": row["answer"]},
        ]
    }


def generate(n_train: int, n_eval: int, seed: int = SEED) -> tuple[list[dict], list[dict]]:
    """Rows with unique e-mail texts; eval texts never occur in train."""
    rng = random.Random(seed)
    seen: set[str] = set()
    rows: list[dict] = []
    while len(rows) < n_train + n_eval:
        row = make_row(rng)
        if row["email"] not in seen:
            seen.add(row["email"])
            rows.append(row)
    return rows[:n_train], rows[n_train:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "invoices")
    parser.add_argument("--train", type=int, default=600, help="training rows")
    parser.add_argument("--eval", type=int, default=150, help="held-out rows")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    train, held_out = generate(args.train, args.eval, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", train), ("eval", held_out)):
        with (args.out / f"{split}.jsonl").open("w") as f:
            for row in rows:
                f.write(json.dumps(to_messages(row), ensure_ascii=False) + "\n")
    print(f"wrote {len(train)} train and {len(held_out)} eval rows to {args.out}")


if __name__ == "__main__":
    main()
