"""The project stands alone: no documentation page, README, docstring or comment names a path outside the repository
(the development machines' shared folder, a home or work directory), including the benchmark reports under
documentation/benchmarks/ (results.md writes working folders by name) and their text outputs. Their raw JSON
records name the folders the runs used and are not checked."""
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTSIDE = re.compile(r"(\.\./shared\b|\bshared/(methods|seeds|data|notes|design)\b|/work/|/root/|/home/\w)")


def _files():
    for top in ("documentation", "semi_nnunet", "benchmarks", "tests", ".ci"):
        for folder, dirs, files in os.walk(os.path.join(REPO, top)):
            dirs[:] = [d for d in dirs if d not in ("__pycache__", "demo_data")]
            for name in files:
                if name.endswith((".md", ".py", ".sh", ".txt")) or name == "run":
                    yield os.path.join(folder, name)
    yield os.path.join(REPO, "semi_nnunet", "demo_data", "benchmark_summary.json")
    for name in ("README.md", "setup.py"):
        yield os.path.join(REPO, name)


def test_the_pattern_finds_what_it_must():
    for bad in ("see ../shared/methods/hco.md", "spec shared/methods/x.md", "/work/bench/raw", "/root/.cache"):
        assert OUTSIDE.search(bad), bad
    for fine in ("semi_nnunet/demo_data", "$DATA/HC18/training_set", "documentation/methods/hco.md", "/tmp/x"):
        assert not OUTSIDE.search(fine), fine


def test_no_path_outside_the_repository():
    hits = []
    for path in sorted(set(_files())):
        if os.path.abspath(path) == os.path.abspath(__file__):
            continue  # this file names the patterns it looks for
        with open(path, encoding="utf-8", errors="replace") as f:
            hits += [f"{os.path.relpath(path, REPO)}:{i}: {line.strip()}" for i, line in enumerate(f, 1)
                     if OUTSIDE.search(line)]
    assert len(list(_files())) > 100  # the walk reaches the tree
    assert not hits, "paths outside the repository:\n" + "\n".join(hits)
