"""Make the README's picture of our results in OHIF: the SEG over the CT, and the SR's lesions in the panel.

    PYTHONPATH=. .venv/bin/python -m tests.support.ohif_screenshot --output tests/figures/ohif-results.png

It builds a synthetic positive study (256 x 256, two planted lesions) with the
node's own builders, loads it into Orthanc, opens it in the pinned OHIF exactly
as tests/interop/test_ohif_viewer.py does, and puts two screenshots side by
side: left, the CT with the SEG and OHIF's Segmentations panel; right, the SR
loaded into OHIF's Measurements panel (OHIF asks, the script says yes): each
lesion listed with its name and volume, and the displayed lesion's outline on
the CT.
The PNG is reduced to a 256-colour palette to stay small. About a minute.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image

from tests.support.interop_objects import write_results
from tests.support.ohif_viewer import lesion_spheres, load_study, ohif_over_orthanc, open_pages
from tests.support.outputs_fixtures import make_case

#: Height of each half in the composed picture (pixels).
HALF_HEIGHT = 560
GAP = 8


def _crop(page: dict[str, Any], with_panel: bool) -> Image.Image:
    """The page's viewport (and, if asked, everything right of it: the side panel)."""
    box, ratio = page["state"]["canvas"], page["state"]["devicePixelRatio"]
    image = Image.open(page["screenshot"]).convert("RGB")
    left, top = round(box["x"] * ratio), round(box["y"] * ratio)
    right = image.width if with_panel else left + round(box["width"] * ratio)
    return image.crop((left, top, right, top + round(box["height"] * ratio)))


def _side_by_side(left: Image.Image, right: Image.Image) -> Image.Image:
    def scaled(image: Image.Image) -> Image.Image:
        return image.resize((round(image.width * HALF_HEIGHT / image.height), HALF_HEIGHT), Image.Resampling.LANCZOS)

    a, b = scaled(left), scaled(right)
    canvas = Image.new("RGB", (a.width + GAP + b.width, HALF_HEIGHT), (0, 0, 0))
    canvas.paste(a, (0, 0))
    canvas.paste(b, (a.width + GAP, 0))
    return canvas


def make_screenshot(output: Path) -> Path:
    with tempfile.TemporaryDirectory(prefix="ohif-screenshot-") as temporary:
        workdir = Path(temporary)
        results = write_results(workdir / "study", make_case(n_slices=16, rows=256, columns=256, job_key="readme"))
        with ohif_over_orthanc(workdir) as (orthanc, server):
            study = load_study(orthanc, results)
            pages = [
                {"name": "seg", "kind": "seg", "url": study.url(study.seg_series), "spheres": lesion_spheres(results)},
                {"name": "sr", "kind": "sr-load", "url": study.url(study.sr_series), "rows": len(results.case.lesions)},
            ]
            report = open_pages(server, pages, workdir / "screenshots")
        for page in report["pages"]:
            if not page["loaded"] or "failure" in page or page["errors"]:
                raise SystemExit(f"OHIF did not show {page['name']} cleanly: {page.get('failure')} {page['errors']}")
        by_name = report["by_name"]
        if len(by_name["sr"]["measurementRows"]) != len(results.case.lesions):
            raise SystemExit(f"OHIF's Measurements panel does not list the lesions: {by_name['sr']['measurementRows']}")
        picture = _side_by_side(_crop(by_name["seg"], with_panel=True), _crop(by_name["sr"], with_panel=True))
        output.parent.mkdir(parents=True, exist_ok=True)
        picture.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(output, optimize=True)
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("tests/figures/ohif-results.png"))
    written = make_screenshot(parser.parse_args().output)
    print(f"{written}: {written.stat().st_size // 1024} kB")


if __name__ == "__main__":
    main()
