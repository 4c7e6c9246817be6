#!/usr/bin/env python3
"""Write a deterministic corpus of English-like sentences (5-60 words each), one per line.

Used by the end-to-end benchmarks (`deberta-embed bench --corpus`, peak RSS while embedding).
No dependencies beyond the standard library.

    python3 scripts/make_corpus.py OUT.txt [--n 10000] [--seed 1]
"""

import argparse
import random

WORDS = (
    "the a an of to in and with on for at by from about over under after before while river "
    "mountain city street house school garden music table window book letter story friend "
    "mother father child teacher doctor farmer driver king queen dog cat bird horse fish tree "
    "flower sun moon star sky rain snow wind fire water stone road bridge train ship plane "
    "walks runs reads writes sings plays watches builds opens closes finds loses gives takes "
    "makes sees hears knows thinks says tells asks answers learns teaches helps carries holds "
    "old young small large quick slow bright dark warm cold quiet loud happy tired strange "
    "simple early late green blue red white black golden silver wooden heavy light gentle "
    "today tomorrow yesterday always never often sometimes again together alone slowly "
    "quickly carefully finally suddenly nearly really café naïve résumé Zürich déjà"
).split()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--min-words", type=int, default=5)
    ap.add_argument("--max-words", type=int, default=60)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with open(args.out, "w", encoding="utf-8") as f:
        for _ in range(args.n):
            k = rng.randint(args.min_words, args.max_words)
            words = [rng.choice(WORDS) for _ in range(k)]
            words[0] = words[0].capitalize()
            f.write(" ".join(words) + rng.choice([".", ".", ".", "!", "?"]) + "\n")


if __name__ == "__main__":
    main()
