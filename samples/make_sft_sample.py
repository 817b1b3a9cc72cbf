"""Generate samples/sft_instructions.jsonl: the bundled instruction dataset for the SFT trainer.

Small, deterministic tasks with checkable answers (arithmetic, unit conversion,
word games, sorting), so a tiny model trained on them shows a falling loss and a
person can read the examples. Run: python samples/make_sft_sample.py
"""
import json
import random
from pathlib import Path

WORDS = """apple river garden window silver planet candle forest bridge rocket pencil
mountain orange basket winter summer yellow dragon castle island harbor meadow thunder
crystal lantern marble pepper saddle tunnel violet walnut zebra anchor beacon cactus""".split()
UNITS = [("kilometers", "meters", 1000), ("meters", "centimeters", 100), ("hours", "minutes", 60),
         ("minutes", "seconds", 60), ("kilograms", "grams", 1000), ("liters", "milliliters", 1000)]


def tasks(rng: random.Random):
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    yield "Add the two numbers.", f"{a} and {b}", f"{a} + {b} = {a + b}."
    a, b = sorted((rng.randint(2, 99), rng.randint(2, 99)), reverse=True)
    yield "Subtract the second number from the first.", f"{a} and {b}", f"{a} - {b} = {a - b}."
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    yield "Multiply the two numbers.", f"{a} and {b}", f"{a} x {b} = {a * b}."
    big, small, factor = rng.choice(UNITS)
    n = rng.randint(1, 20)
    yield f"Convert {big} to {small}.", f"{n} {big}", f"{n} {big} is {n * factor} {small}."
    word = rng.choice(WORDS)
    yield "Reverse the letters of the word.", word, f"The word reversed is {word[::-1]}."
    word = rng.choice(WORDS)
    vowels = sum(ch in "aeiou" for ch in word)
    yield "Count the vowels in the word.", word, f"The word {word} has {vowels} vowels."
    nums = rng.sample(range(1, 100), 5)
    yield "Sort the numbers from smallest to largest.", ", ".join(map(str, nums)), ", ".join(map(str, sorted(nums))) + "."
    words = rng.sample(WORDS, 4)
    yield "Put the words in alphabetical order.", ", ".join(words), ", ".join(sorted(words)) + "."
    n = rng.randint(2, 200)
    yield "Is the number even or odd?", str(n), f"{n} is {'even' if n % 2 == 0 else 'odd'}."
    word = rng.choice(WORDS)
    yield "Write the word in capital letters.", word, f"{word.upper()}"


def main() -> None:
    rng = random.Random(1234)
    rows = []
    while len(rows) < 320:
        for instruction, inp, out in tasks(rng):
            rows.append({"instruction": instruction, "input": inp, "output": out})
    out = Path(__file__).with_name("sft_instructions.jsonl")
    with out.open("w") as fh:
        for row in rows[:320]:
            fh.write(json.dumps(row) + "\n")
    print(f"wrote {out} ({len(rows[:320])} rows)")


if __name__ == "__main__":
    main()
