"""The shipped default models load, fit the size budget and reproduce their cards' figures.

The figures are checked on the Kaggle test split (20 images, image labels only),
which keeps this test to a few seconds. Tolerances: accuracy, sensitivity and
specificity may move by one image (float differences between CPUs can flip a
case sitting on the threshold), ROC AUC by 0.03. The data are read from
../shared; when they are missing the test fails and says so.
"""

from __future__ import annotations

import pytest

from dicom_node.models.card import ModelCard
from dicom_node.models.registry import load_model, shipped_model_dir
from dicom_node.training.evaluate import evaluate
from tests.support.models import REPO, one_torch_thread, require_kaggle  # noqa: F401

WEIGHTS = REPO / "dicom_node" / "models" / "weights"
KINDS = ("classifier", "unet", "maskrcnn")
#: The default model of each kind together must stay under this many bytes of weights.
SIZE_BUDGET = 20 * 1024 * 1024
#: Everything the package ships under ``weights/`` (every folder: weights, cards, figures),
#: which includes the Kaggle-only U-Net kept as the whole-stack one's ``--init``.
PACKAGE_BUDGET = 32 * 1024 * 1024


def test_the_default_models_fit_the_size_budget():
    total = 0
    for kind in KINDS:
        folder = shipped_model_dir(kind)
        card = ModelCard.load(folder)
        total += (folder / card.weights_file).stat().st_size
    assert total <= SIZE_BUDGET, f"default weights are {total / 2**20:.1f} MiB, the budget is 20 MiB"


def test_everything_shipped_under_weights_fits_the_package_budget():
    shipped = [path for path in WEIGHTS.rglob("*") if path.is_file() and "__pycache__" not in path.parts]
    total = sum(path.stat().st_size for path in shipped)
    assert total <= PACKAGE_BUDGET, f"dicom_node/models/weights is {total / 2**20:.1f} MiB, the budget is 32 MiB"


def test_the_default_unet_is_the_whole_stack_one():
    assert load_model(shipped_model_dir("unet"), kind="unet").card.name == "ich-unet-stacks"


#: Shipped folders and their kinds: the default of each kind (the U-Net's is ``unet-stacks``),
#: and the Kaggle-only U-Net (``unet``: the init of ``unet-stacks``, selectable by ``unet_dir``).
FOLDERS = {"classifier": "classifier", "unet": "unet", "maskrcnn": "maskrcnn", "unet-stacks": "unet"}


@pytest.mark.parametrize("folder", sorted(FOLDERS))
def test_a_shipped_model_reproduces_its_card_on_the_kaggle_test_split(folder):
    data = require_kaggle()
    loaded = load_model(WEIGHTS / folder, kind=FOLDERS[folder])
    expected = loaded.card.metrics["evaluation"]["test"]["study"]

    report = evaluate(
        WEIGHTS / folder, data, splits=["test"], device="cpu", write_card=False, resamples=10
    )
    got = report.splits[0].metrics["study"]

    assert got["n"] == expected["n"] == 20
    one_image = 1 / 20 + 1e-9
    assert got["accuracy"] == pytest.approx(expected["accuracy"], abs=one_image)
    assert got["sensitivity"] == pytest.approx(expected["sensitivity"], abs=2 * one_image)
    assert got["specificity"] == pytest.approx(expected["specificity"], abs=2 * one_image)
    assert got["roc_auc"] == pytest.approx(expected["roc_auc"], abs=0.03)
