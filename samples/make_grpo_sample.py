"""Generate samples/grpo_arithmetic.jsonl: word problems with numeric answers for GRPO.

Each row has a `question` and a GSM8K-style `answer` (worked steps, then `#### N`),
so the correctness reward has a reference to compare with. Deterministic.
Run: python samples/make_grpo_sample.py
"""
import json
import random
from pathlib import Path

NAMES = ["Ava", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jon", "Kira", "Liam"]
ITEMS = ["apples", "stickers", "marbles", "books", "pencils", "coins", "cards", "shells", "stamps", "beads"]


def problems(rng: random.Random):
    name, other = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    a, b = rng.randint(3, 60), rng.randint(2, 40)
    yield (f"{name} has {a} {item} and buys {b} more. How many {item} does {name} have now?",
           f"{name} starts with {a} and adds {b}: {a} + {b} = {a + b}.\n#### {a + b}")
    a, b = rng.randint(20, 90), rng.randint(2, 19)
    yield (f"{name} had {a} {item} and gave {b} to {other}. How many {item} are left?",
           f"{a} - {b} = {a - b}.\n#### {a - b}")
    boxes, per = rng.randint(2, 12), rng.randint(2, 12)
    yield (f"There are {boxes} boxes with {per} {item} in each box. How many {item} are there in total?",
           f"{boxes} x {per} = {boxes * per}.\n#### {boxes * per}")
    groups, per = rng.randint(2, 9), rng.randint(2, 12)
    total = groups * per
    yield (f"{name} shares {total} {item} equally among {groups} friends. How many does each friend get?",
           f"{total} / {groups} = {per}.\n#### {per}")
    price, count, paid = rng.randint(2, 9), rng.randint(2, 6), 0
    paid = price * count + rng.randint(1, 20)
    change = paid - price * count
    yield (f"A {item[:-1]} costs {price} dollars. {name} buys {count} of them and pays with {paid} dollars. "
           f"How much change does {name} get?",
           f"{count} x {price} = {price * count}; {paid} - {price * count} = {change}.\n#### {change}")
    a, b, c = rng.randint(5, 30), rng.randint(5, 30), rng.randint(2, 5)
    yield (f"{name} collects {a} {item} on Monday and {b} on Tuesday, then doubles the total {c - 1} "
           f"time{'s' if c > 2 else ''}. How many {item} does {name} have?",
           f"{a} + {b} = {a + b}; doubling {c - 1} time(s) gives {(a + b) * 2 ** (c - 1)}.\n"
           f"#### {(a + b) * 2 ** (c - 1)}")


def main() -> None:
    rng = random.Random(4242)
    rows = []
    while len(rows) < 360:
        rows += [{"question": q, "answer": a} for q, a in problems(rng)]
    out = Path(__file__).with_name("grpo_arithmetic.jsonl")
    with out.open("w") as fh:
        for row in rows[:360]:
            fh.write(json.dumps(row) + "\n")
    print(f"wrote {out} ({len(rows[:360])} rows)")


if __name__ == "__main__":
    main()
