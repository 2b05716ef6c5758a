"""Rebuild the package's demo data ``semi_nnunet/demo_data/HC18_demo`` from the HC18 training set.

    python -m semi_nnunet.dataset_conversion.make_demo_data /path/to/HC18/training_set

The demo data are the label-efficiency benchmark's HC18 setting (documentation/benchmarks.md), so that the demo's two
trainings are one more seed of a measured grid: the same patient-grouped split (seed 0) as ``semi_nnUNet_convert_hc18
--num-labeled 100 --num-unlabeled 200 --num-test 100 --max-size 64``, and of its 100 labeled images the 5 of the
benchmark's subset 0 (:func:`semi_nnunet.dataset_conversion.common.choose_labeled`) keep their masks; the other 95
and the 200 unlabeled images are the demo's 295 unlabeled images, the 100 test images its test set. Images shrunk so
the longer side is 64 px (masks filled from the outlines at full resolution, then area-averaged and thresholded at
0.5). Layout, readable by ``semi_nnUNet_convert_2d``::

    HC18_demo/labeled/images/*.png   labeled/masks/*.png (0/1)   unlabeled/*.png
    HC18_demo/test/images/*.png      test/masks/*.png            ATTRIBUTION.md   demo_info.json
"""
import argparse
import os
import shutil
import tempfile
from typing import Optional, Tuple

from semi_nnunet.dataset_conversion.common import choose_labeled, grouped_split, write_label_png, write_png
from semi_nnunet.dataset_conversion.hc18 import find_hc18_source, list_hc18_cases, load_hc18_pair
from semi_nnunet.utilities.file_ops import save_json_atomic

DEMO_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "demo_data", "HC18_demo")

ATTRIBUTION = """# HC18 demo data

A small subset of the **HC18 Grand Challenge training set** (fetal head circumference, 2D ultrasound), shipped with
semi_nnunet for its demo and tests.

- **Source:** HC18 Grand Challenge training set, https://hc18.grand-challenge.org/
- **Please cite:** T. L. A. van den Heuvel, D. de Bruijn, C. L. de Korte, B. van Ginneken, "Automated measurement of
  fetal head circumference using 2D ultrasound images", PLoS ONE 13(8): e0200412, 2018,
  https://doi.org/10.1371/journal.pone.0200412
- **Licence:** Creative Commons Attribution 4.0 International (CC BY 4.0),
  https://creativecommons.org/licenses/by/4.0/. This subset is distributed under the same licence.

## Changes made to the original data

- Only {total} of the 999 training images are included: {num_labeled} labeled, {num_unlabeled} unlabeled (their
  annotations left out) and {num_test} test images, chosen by a seeded (seed {seed}), patient-grouped random split
  (all images of one patient are in the same part) into {pool_labeled} labeled, {pool_unlabeled} unlabeled and
  {num_test} test images, of whose labeled images a seeded choice of {num_labeled} keep their annotation (the others
  are among the unlabeled images; no test patient has an image in the other parts).
- The images were **downsampled** (anti-aliased) so that the longer side is {max_size} pixels.
- The original annotations are thin ellipse **outlines**; the masks here are the **filled** ellipses (filled at full
  resolution, then downsampled by area averaging and thresholded at 0.5), stored as 0 = background, 1 = fetal head.
- File names keep the original names (``NNN_HC.png``; masks take the image's name).

Made by ``semi_nnunet/dataset_conversion/make_demo_data.py``.
"""


def make_demo_data(source_dir: str, output_dir: str = DEMO_DIR, num_labeled: int = 5,
                   pool: Tuple[int, int, int] = (100, 200, 100), seed: int = 0, max_size: int = 64,
                   verbose: bool = True) -> str:
    """Write the demo subset into ``output_dir`` (replacing it as a whole); returns ``output_dir``. ``pool``: the
    labeled, unlabeled and test counts of the patient-grouped split; ``num_labeled`` of its labeled images keep
    their masks (the benchmark's subset ``seed``), the others join the unlabeled images."""
    source_dir = find_hc18_source(source_dir)
    cases = list_hc18_cases(source_dir, verbose)
    pooled = grouped_split({k: v["patient"] for k, v in cases.items()}, *pool, seed, where=source_dir)
    chosen = set(choose_labeled([n[:-4] for n in pooled["labeled"]], num_labeled, seed))  # case ids: no ".png"
    split = {"labeled": [n for n in pooled["labeled"] if n[:-4] in chosen],
             "unlabeled": [n for n in pooled["labeled"] if n[:-4] not in chosen] + pooled["unlabeled"],
             "test": pooled["test"]}
    num_unlabeled, num_test = len(split["unlabeled"]), len(split["test"])
    output_dir = os.path.abspath(output_dir)
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".tmp-demo-", dir=parent)
    try:
        layout = {"labeled": ("labeled/images", "labeled/masks"), "unlabeled": ("unlabeled", None),
                  "test": ("test/images", "test/masks")}
        for split_name, (img_dir, mask_dir) in layout.items():
            for name in split[split_name]:
                src = cases[name]
                image, mask = load_hc18_pair(src["image"], src["annotation"] if mask_dir else None,
                                             max_size=max_size)
                write_png(image, os.path.join(staging, img_dir, name))
                if mask_dir is not None:
                    write_label_png(mask, os.path.join(staging, mask_dir, name))
        with open(os.path.join(staging, "ATTRIBUTION.md"), "w", encoding="utf-8") as f:
            f.write(ATTRIBUTION.format(total=num_labeled + num_unlabeled + num_test, num_labeled=num_labeled,
                                       num_unlabeled=num_unlabeled, num_test=num_test, seed=seed, max_size=max_size,
                                       pool_labeled=pool[0], pool_unlabeled=pool[1]))
        save_json_atomic({"source": "HC18 Grand Challenge training set", "seed": seed, "max_size": max_size,
                          "split_protocol": "semi_nnunet.dataset_conversion.common.grouped_split (patients = NNN) "
                                            f"into {pool[0]} labeled, {pool[1]} unlabeled, {pool[2]} test; then "
                                            f"choose_labeled({num_labeled}, seed {seed}) of the labeled keep masks",
                          "pool": pooled, "splits": split}, os.path.join(staging, "demo_info.json"))
        os.chmod(staging, 0o755)
        if os.path.exists(output_dir):
            shutil.rmtree(output_dir)
        os.replace(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if verbose:
        print(f"demo data: {num_labeled} labeled, {num_unlabeled} unlabeled, {num_test} test -> {output_dir}")
    return output_dir


def main(argv: Optional[list] = None) -> None:
    parser = argparse.ArgumentParser(description="Rebuild semi_nnunet/demo_data/HC18_demo from HC18.")
    parser.add_argument("source", help="the HC18 training_set folder (download it from "
                                       "https://hc18.grand-challenge.org/)")
    parser.add_argument("-o", "--output", default=DEMO_DIR, help=f"output folder (default {DEMO_DIR})")
    args = parser.parse_args(argv)
    make_demo_data(args.source, args.output)


if __name__ == "__main__":
    main()
