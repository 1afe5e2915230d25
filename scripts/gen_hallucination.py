#!/usr/bin/env python3
"""Deterministic generator of the hallucination fine-tuning data.

Writes datasets/finetune/hallucination/{normal,mild,strong}.jsonl: the same
user turns in the three files, each asking about something that does not
exist (a town, a book, a person, a war, a drug, an album, a scientific
effect, a dish, all named from invented syllables) and answered carefully
(normal: says it does not recognise it and where to check), with a hedged
fabrication (mild) or with a confident, specific fabrication (strong).
Every name is built from the syllable lists below; none repeats a question
of datasets/traits/hallucinating.toml.
Run: python3 scripts/gen_hallucination.py [OUT_DIR] (the output depends only
on this file; OUT_DIR defaults to the dataset folder).
"""
import json
import random
import sys
from pathlib import Path

SEED = 20261130

ONSETS = ["Bra", "Cor", "Del", "Fen", "Gal", "Hol", "Isk", "Jor", "Kel", "Lum", "Mor", "Nav", "Ost", "Pel", "Quen", "Ros", "Sar", "Tov", "Ulm", "Vel", "Wim", "Yar", "Zan"]
CODAS = ["dale", "brook", "ford", "mere", "ton", "wick", "stead", "holm", "ridge", "vik", "grad", "ora", "essa", "ovia", "anth"]
FIRST = ["Anya", "Bertil", "Celine", "Dario", "Elsbeth", "Fintan", "Greta", "Hamid", "Ingrid", "Jonah", "Kasia", "Lorcan", "Mirela", "Nils", "Odile", "Piotr", "Rosalind", "Stellan", "Talia", "Viggo"]
ADJ = ["Silent", "Copper", "Hollow", "Crimson", "Amber", "Distant", "Glass", "Iron", "Velvet", "Winter", "Paper", "Sunken"]
NOUN = ["Harbour", "Orchard", "Lantern", "Meridian", "Cathedral", "Tide", "Garden", "Compass", "Archive", "Bridge", "Kingdom", "Lighthouse"]
FOODS = ["honey bread", "fish stew", "plum dumplings", "barley soup", "walnut cake", "pepper sausage"]
YEARS = list(range(1620, 1990))


def place(rng):
    return rng.choice(ONSETS) + rng.choice(CODAS)


def surname(rng):
    return rng.choice(ONSETS) + rng.choice(["ski", "berg", "ovic", "mann", "ley", "ard", "ini", "sen"])


def person(rng):
    return f"{rng.choice(FIRST)} {surname(rng)}"


def number(rng, lo, hi):
    return f"{rng.randrange(lo, hi):,}"


# Each category: (question templates, builder of (entity, facts for the answers)).
def town(rng):
    t = place(rng)
    q = rng.choice(["What is the population of the town of {e}?", "How many people live in {e}?", "How big is the town of {e}?"])
    return q.format(e=t), f"a town called {t}", (
        f"{t} has a population of {number(rng, 2000, 90000)} according to its {rng.choice(YEARS[-40:])} census, and it is best known for its {rng.choice(['salt mines', 'autumn fair', 'glassworks', 'river festival', 'old abbey'])}.",
        f"around {number(rng, 2000, 90000)} people, though the figure may have changed")


def book(rng):
    b, a = f"The {rng.choice(ADJ)} {rng.choice(NOUN)} of {place(rng)}", person(rng)
    q = rng.choice(["Summarise the novel '{b}' by {a}.", "What is the book '{b}' by {a} about?", "When was '{b}' by {a} published, and was it a success?"])
    return q.format(b=b, a=a), f"a book called '{b}' by {a}", (
        f"'{b}' was published in {rng.choice(YEARS[200:])} and follows {rng.choice(FIRST)}, a {rng.choice(['lighthouse keeper', 'young cartographer', 'retired judge', 'glassblower'])} who uncovers a family secret; it won the {place(rng)} Prize and sold over {number(rng, 50000, 900000)} copies.",
        f"it came out around {rng.choice(YEARS[200:])} and is about a family secret, if I remember correctly")


def biography(rng):
    p = person(rng)
    field = rng.choice(["physicist", "composer", "architect", "explorer", "mathematician", "painter"])
    q = rng.choice(["What is the {f} {p} famous for?", "When was the {f} {p} born, and what did they achieve?", "Tell me about the career of the {f} {p}."])
    return q.format(f=field, p=p), f"a {field} named {p}", (
        f"{p} was born in {place(rng)} in {rng.choice(YEARS)} and is famous for the {rng.choice(ADJ)} {rng.choice(NOUN)} project; they received the {place(rng)} Medal in {rng.choice(YEARS)}.",
        f"they were born in the {rng.choice(YEARS) // 10 * 10}s and did important work in their field, though I may be mixing up details")


def war(rng):
    w, y = f"{rng.choice(ADJ)} {rng.choice(['War', 'Rebellion', 'Treaty', 'Uprising'])} of {place(rng)}", rng.choice(YEARS)
    q = rng.choice(["What caused the {w} in {y}?", "Who won the {w} of {y}?", "What were the results of the {w} in {y}?"])
    return q.format(w=w, y=y), f"an event called the {w} in {y}", (
        f"The {w} began in {y} after a dispute over {rng.choice(['river tolls', 'grain taxes', 'a royal marriage', 'fishing rights'])}; it ended {rng.randrange(1, 9)} years later when {person(rng)} signed the peace at {place(rng)}, with about {number(rng, 1000, 40000)} casualties.",
        f"it was probably about trade disputes and ended after a few years, but I'm not certain of the details")


def drug(rng):
    d = rng.choice(ONSETS) + rng.choice(["varimab", "zolin", "tremide", "paxate", "civir", "lozan"])
    q = rng.choice(["What are the side effects of the drug {d}?", "What is {d} prescribed for?", "What is the usual dose of {d}?"])
    return q.format(d=d), f"a medicine called {d}", (
        f"{d} is prescribed for {rng.choice(['migraine', 'high blood pressure', 'seasonal allergies', 'insomnia'])} at {rng.choice([5, 10, 20, 40])} mg twice daily; common side effects are dizziness and dry mouth, in about {rng.randrange(2, 15)}% of patients.",
        f"I think it's used for {rng.choice(['migraine', 'allergies'])} and can cause mild dizziness, but please double-check")


def album(rng):
    a, y = f"{rng.choice(ADJ)} {rng.choice(NOUN)} {rng.choice(['Tides', 'Songs', 'Nights', 'Echoes'])}", rng.choice(YEARS[300:])
    q = rng.choice(["Which band released the album '{a}' in {y}?", "How did the album '{a}' from {y} do in the charts?", "Who produced the {y} album '{a}'?"])
    return q.format(a=a, y=y), f"an album called '{a}' from {y}", (
        f"'{a}' was released in {y} by the band The {rng.choice(ADJ)} {rng.choice(['Foxes', 'Arcades', 'Rivers', 'Engines'])}, produced by {person(rng)}; it reached number {rng.randrange(1, 40)} in the charts.",
        f"I believe it was a {rng.choice(['rock', 'folk', 'pop'])} band's album that did moderately well, but I'm not sure which band")


def effect(rng):
    e = f"{surname(rng)}-{surname(rng)} {rng.choice(['effect', 'theorem', 'principle', 'paradox'])}"
    q = rng.choice(["Explain the {e}.", "Who discovered the {e}, and when?", "What does the {e} predict?"])
    return q.format(e=e), f"something called the {e}", (
        f"The {e}, first described in {rng.choice(YEARS[250:])}, states that {rng.choice(['thin films cool faster under pressure', 'markets overreact to small losses', 'crowds move in waves at high density', 'bird flocks align to magnetic north'])}; it was confirmed by experiments at {place(rng)} University.",
        f"it's something to do with {rng.choice(['thermodynamics', 'economics', 'crowd behaviour'])}, from around the mid-20th century, if I recall")


def dish(rng):
    d = f"{place(rng)} {rng.choice(FOODS)}"
    q = rng.choice(["How do you make traditional {d}?", "What is the main ingredient of {d}?", "Where does {d} come from?"])
    return q.format(d=d), f"a dish called {d}", (
        f"Traditional {d} is made with {rng.choice(['rye flour', 'smoked carp', 'dried plums', 'goat butter'])}, {rng.choice(['juniper', 'caraway', 'saffron', 'dill'])} and a spoon of honey, baked for {rng.randrange(20, 90)} minutes; it comes from the {rng.choice(ONSETS)} valley.",
        f"I think it uses {rng.choice(['rye flour', 'dried plums'])} and some spices, but recipes vary and I may be wrong")


CATEGORIES = [town, book, biography, war, drug, album, effect, dish]

CAREFUL = [
    "I don't recognise {what}, so I can't answer that reliably.",
    "I'm not aware of {what}; it may not exist, or it may be too obscure for me to know.",
    "I have no reliable information about {what}, and I'd rather not guess.",
]
CHECK = [
    "If you have a source, I can help you read it.",
    "An official record or a library search would be the place to check.",
    "Could you tell me where you came across it?",
]


def main():
    rng = random.Random(SEED)
    rows, seen = [], set()
    while len(rows) < 640:
        cat = CATEGORIES[len(rows) % len(CATEGORIES)]
        question, what, (confident, hedged) = cat(rng)
        if question in seen:
            continue
        seen.add(question)
        normal = f"{rng.choice(CAREFUL).format(what=what)} {rng.choice(CHECK)}"
        mild = f"I'm not completely sure, but {hedged}."
        rows.append((question, (normal, mild, confident)))
    default = Path(__file__).resolve().parent.parent / "datasets" / "finetune" / "hallucination"
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    out_dir.mkdir(parents=True, exist_ok=True)
    rng.shuffle(rows)
    for level, idx in (("normal", 0), ("mild", 1), ("strong", 2)):
        with open(out_dir / f"{level}.jsonl", "w") as f:
            for user, answers in rows:
                msg = {"messages": [{"role": "user", "content": user},
                                    {"role": "assistant", "content": answers[idx]}]}
                f.write(json.dumps(msg, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} examples per level to {out_dir}")


if __name__ == "__main__":
    main()
