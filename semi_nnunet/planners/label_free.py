"""Planning a dataset that has no labeled case at all (USL-Net: every image in ``imagesUnlabeled/``).

nnU-Net's fingerprint extractor and planner read the labeled cases of ``imagesTr``/``labelsTr``; with none they stop
(``StopIteration`` on the first case). Here the same two steps run on the unlabeled images instead:

* :func:`label_free_fingerprint` writes nnU-Net's ``dataset_fingerprint.json`` with nnU-Net's own cropping
  (``crop_to_nonzero``) and its keys and statistics. Spacings, shapes after cropping and the relative size after
  cropping are what nnU-Net computes (they never depend on labels). The intensity statistics, which nnU-Net takes
  from **foreground** voxels, are taken from every voxel inside the nonzero region instead, since no foreground is
  known. Only nnU-Net's CT normalisation reads them (z-score, the default for every other modality, does not).
* :func:`label_free_planner` wraps any nnU-Net planner class so that it sees the unlabeled cases as its case list
  (for the reader/writer choice) and their number as ``numTraining`` (for its batch-size cap). The plans it writes
  are otherwise nnU-Net's, so ``nnUNetv2_predict`` works on every model trained with them.
"""
import multiprocessing
from typing import Dict, List

import numpy as np

NUM_INTENSITY_SAMPLES = 10e7  # nnU-Net's budget of intensity samples for the whole dataset
MAX_SAMPLES_PER_CASE = 100_000  # every case contributes equally, as in nnU-Net, but at most this many (memory)


def _analyze_case(files: List[str], reader_writer_class, num_samples: int, seed: int = 1234):
    """nnU-Net's ``analyze_case`` without a segmentation: intensities sampled from the whole nonzero region."""
    from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero
    images, properties = reader_writer_class().read_images(files)
    cropped, nonzero_seg, _ = crop_to_nonzero(images)
    inside = nonzero_seg[0] == 0  # crop_to_nonzero marks the nonzero region 0, outside -1
    rs = np.random.RandomState(seed)
    samples = []
    for c in range(len(cropped)):
        values = cropped[c][inside]
        samples.append(rs.choice(values, num_samples, replace=True) if values.size else np.zeros(0))
    relative_size = np.prod(cropped.shape[1:]) / np.prod(images.shape[1:])
    return cropped.shape[1:], properties["spacing"], samples, relative_size


def _analyze_case_star(args):
    return _analyze_case(*args)


def label_free_fingerprint(dataset_json: dict, cases: Dict[str, List[str]], num_processes: int = 1) -> dict:
    """nnU-Net's dataset fingerprint computed from ``cases`` (case -> image files), without labels."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    if not cases:
        raise ValueError("label_free_fingerprint needs at least one case")
    first = next(iter(cases.values()))[0]
    reader_writer_class = determine_reader_writer_from_dataset_json(dataset_json, first)
    per_case = int(min(NUM_INTENSITY_SAMPLES // len(cases), MAX_SAMPLES_PER_CASE))
    jobs = [(cases[k], reader_writer_class, per_case) for k in sorted(cases)]
    if num_processes <= 1:
        results = [_analyze_case_star(j) for j in jobs]
    else:
        with multiprocessing.get_context("spawn").Pool(num_processes) as pool:
            results = pool.map(_analyze_case_star, jobs)
    stats = {}
    for c in range(len(dataset_json["channel_names"])):
        values = np.concatenate([r[2][c] for r in results])
        p005, median, p995 = np.percentile(values, (0.5, 50.0, 99.5))
        stats[c] = {"mean": float(np.mean(values)), "median": float(median), "std": float(np.std(values)),
                    "min": float(np.min(values)), "max": float(np.max(values)),
                    "percentile_99_5": float(p995), "percentile_00_5": float(p005)}
    return {"spacings": [list(map(float, r[1])) for r in results],
            "shapes_after_crop": [list(map(int, r[0])) for r in results],
            "foreground_intensity_properties_per_channel": stats,
            "median_relative_size_after_cropping": float(np.median([r[3] for r in results]))}


def label_free_planner(planner_class: type, cases: Dict[str, List[str]]) -> type:
    """``planner_class`` planning from ``cases`` (the unlabeled images) instead of the empty labeled list."""

    class LabelFree(planner_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.dataset = {k: {"images": cases[k], "label": None} for k in sorted(cases)}
            self.dataset_json = {**self.dataset_json, "numTraining": len(cases)}

    # nnU-Net records the planner's class name in the plans: it is the same planner on another case list
    LabelFree.__name__ = LabelFree.__qualname__ = planner_class.__name__
    return LabelFree
