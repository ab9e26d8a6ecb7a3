"""Stage functions through the CLI, without Prefect or MLflow (--no-track)."""
from __future__ import annotations

import json
import re

from reid.cli import main


def test_a_market1501_directory_needs_only_the_dataset_names(tiny_root, tiny_overrides, tmp_path,
                                                             capsys):
    """Any directory in the real Market-1501 layout under DATASETS.ROOT trains and evaluates."""
    market = ["DATASETS.ROOT", str(tiny_root / "SyntheticMarket1501"),  # holds Market-1501-v15.09.15
              "DATASETS.NAMES", '("Market1501",)', "DATASETS.TESTS", '("Market1501",)',
              "TEST.PRECISE_BN.DATASET", "Market1501"]
    for command in ("prepare", "train", "precise-bn", "eval"):
        assert main([command, "--no-track", *tiny_overrides, *market]) == 0, command
    out = tmp_path / "out"
    counts = json.loads((out / "datasets.json").read_text())["Market1501"]
    # 6 test ids x 3 cameras x 6 images; 3 junk images (pid -1) dropped, 4 distractors kept.
    assert counts["train"] == {"images": 48, "ids": 8, "cameras": 3}
    assert counts["query"]["images"] + counts["gallery"]["images"] == 6 * 6 + 4
    # Training metrics stay in OUTPUT_DIR without MLflow: metrics.json and lines of log.txt.
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    steps = [r["iteration"] for r in records]
    assert steps == sorted(set(steps)) and records[-1]["epoch"] == 2.0  # SOLVER.MAX_EPOCH 2
    assert re.search(rf"iter {steps[-1]}/{steps[-1]}, epoch 2.00/2: .*total_loss \d",
                     (out / "log.txt").read_text())
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"Market1501"} and 0 <= results["Market1501"]["mAP"] <= 100
    assert "Market1501" in capsys.readouterr().out  # reid eval prints the table


def test_extract_writes_query_then_gallery_features(tiny_root, tiny_overrides, tmp_path):
    import numpy as np
    assert main(["train", "--no-track", *tiny_overrides, "SOLVER.MAX_EPOCH", "1"]) == 0
    target = tmp_path / "feats.npz"
    assert main(["extract", *tiny_overrides, "--output", str(target)]) == 0
    data = np.load(target)
    assert data["features"].shape == (len(data["pids"]), 512)
    assert int(data["num_query"]) > 0 and np.isfinite(data["features"]).all()


def test_a_synthetic_root_that_does_not_exist_is_created_with_a_warning(tmp_path, caplog):
    """A typo in DATASETS.ROOT would silently generate a new synthetic set: it is named."""
    from conftest import RECIPE, TINY_DATA, as_overrides
    from reid.config import load_config
    from reid.stages import ensure_synthetic
    root = tmp_path / "no" / "such-root"
    cfg = load_config(RECIPE, as_overrides({**TINY_DATA, "DATASETS.ROOT": str(root)}))
    with caplog.at_level("WARNING", logger="reid.stages"):
        ensure_synthetic(cfg)
    assert f"DATASETS.ROOT {root} does not exist: creating it for the synthetic set" in caplog.text
    assert (root / "SyntheticMarket1501").is_dir()
    caplog.clear()
    (root / "SyntheticMarket1501").rename(root / "moved")  # the root exists, the set does not
    with caplog.at_level("WARNING", logger="reid.stages"):
        ensure_synthetic(cfg)
    assert "does not exist" not in caplog.text and (root / "SyntheticMarket1501").is_dir()


def test_a_no_track_stage_never_imports_mlflow(tiny_overrides, tmp_path):
    """`--no-track` (and every torchrun rank other than 0) runs the stage adapters with a
    NullTracker, which needs no MLflow: the import costs 1.5-2 s per process."""
    import subprocess
    import sys
    from conftest import ROOT
    script = ("import sys; from reid.cli import main; "
              "rc = main(['prepare', '--no-track', *sys.argv[1:]]); "
              "print(rc, sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow')[:3])")
    done = subprocess.run([sys.executable, "-c", script, *tiny_overrides], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "0 []"
    assert (tmp_path / "out" / "datasets.json").is_file()
