"""How often the slice classifier fires on slices without clot, and what max pooling makes of it.

    PYTHONPATH=$PWD .venv/bin/python -m tests.tools.classifier_negative_slices \
        --model dicom_node/models/weights/classifier --data ../shared/data/phe-sich-ct-ids --split val

Every PHE-SICH patient has a bleed, so whole stacks give no negative studies; their
slices without clot do. This prints, over the split's stacks:

* the share of slices without clot whose probability reaches the decision threshold,
  by level (lower, middle, upper third of the stack);
* per patient, the maximum over the slices without clot only: the call max pooling
  would make on that patient's stack if the clot were not there ("pseudo-negative
  study"), and how many patients it calls positive;
* what a per-slice false-alarm rate ``q`` means for a negative study of n slices if
  slices fired independently: ``1 - (1 - q)^n`` for n = 30, 90, 240 (an upper bound in
  spirit, since neighbours are correlated; it shows why the max grows with n).

Only figures are printed; nothing is written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from dicom_node.training.data import evaluation_cases
from dicom_node.training.whole_study import LEVELS


def main() -> None:
    """Parse the arguments, run the classifier over the split, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from dicom_node.models.registry import load_model
    from dicom_node.models.runner import Runner

    loaded = load_model(args.model, kind="classifier")
    runner = Runner(loaded, device="cpu")
    threshold = loaded.card.thresholds.decision
    fired = dict.fromkeys(LEVELS, 0)
    negatives = dict.fromkeys(LEVELS, 0)
    pseudo: list[float] = []
    for case in evaluation_cases(args.data, loaded.card.input, split=args.split, seed=args.seed):
        if case.truth is None or case.truth.shape[0] < 2:
            continue
        result = runner.predict_windowed(case.windowed, case.volume) if case.windowed is not None else runner.predict(
            case.volume
        )
        p = np.asarray(result.slice_probabilities)
        clean = ~case.truth.reshape(case.truth.shape[0], -1).any(axis=1)
        for index in np.flatnonzero(clean):
            level = LEVELS[min(2, int(index) * 3 // len(p))]
            negatives[level] += 1
            fired[level] += int(p[index] >= threshold)
        pseudo.append(float(p[clean].max()) if clean.any() else 0.0)
    total_fired, total = sum(fired.values()), sum(negatives.values())
    q = total_fired / total if total else float("nan")
    print(f"patients {len(pseudo)}, slices without clot {total}, decision threshold {threshold}")
    for level in LEVELS:
        print(f"  {level:<6} {fired[level]:>4} / {negatives[level]:<4} slices without clot reach the threshold")
    print(f"  all    {total_fired:>4} / {total:<4} = {q:.4f} per slice")
    called = sum(v >= threshold for v in pseudo)
    print(f"pseudo-negative studies (each stack's slices without clot, max pooled): {called} / {len(pseudo)} called positive")
    print("  per patient max: " + " ".join(f"{v:.2f}" for v in sorted(pseudo)))
    for n in (30, 90, 240):
        print(f"independent slices at q={q:.4f}: P(a negative study of {n} slices is called) = {1 - (1 - q) ** n:.2f}")


if __name__ == "__main__":
    main()
