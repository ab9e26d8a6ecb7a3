"""dvc.yaml's plots: `dvc plots show` renders the training loss, the learning rate and the ROC
from the files the train and evaluate stages write (tiny hand-made ones here)."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import yaml

from conftest import ROOT
from reid.training_curve import CURVE_FILE, write_training_curve
from test_dvc import BIN, git_dvc_repo, sh

# metrics.json as the trainer writes it: training records, an evaluation record, a torn line.
METRICS = [
    {"iteration": 2, "total_loss": 4.25, "lr": 0.2, "loss_cls": 3.0},
    {"iteration": 1, "total_loss": 5.5, "lr": 0.1, "loss_cls": 4.0},
    {"iteration": 2, "eval.SyntheticMarket1501.mAP": 12.5},
    {"iteration": 3, "total_loss": 3.0, "lr": 0.3, "loss_cls": 2.0},
]
CURVE = "iteration,total_loss,lr\n1,5.5,0.1\n2,4.25,0.2\n3,3.0,0.3\n"  # by hand
ROC = "threshold,far,tar\n0.9,0,0.125\n0.5,0.25,0.75\n0.1,1,1\n"  # write_roc's columns


def plotted(html: str) -> dict[str, tuple[str, list[dict]]]:
    """{plot id: (its Vega-Lite spec as text, its data rows)} of dvc's HTML page."""
    out = {}
    for spec, plot_id in re.findall(r"var spec = (\{.*?\});\s*vegaEmbed\('#([^']+)'", html):
        values = json.loads(spec)["data"]["values"]
        out[plot_id] = spec, [{k: v for k, v in row.items() if k != "rev"} for row in values]
    return out


def test_training_curve_table_holds_the_training_records_in_order(tmp_path):
    metrics = tmp_path / "metrics.json"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in METRICS) + '{"iteration": 4, "tot')
    write_training_curve(metrics, tmp_path / CURVE_FILE)
    assert (tmp_path / CURVE_FILE).read_text() == CURVE


def test_dvc_plots_show_renders_loss_lr_and_roc(tmp_path):
    repo = git_dvc_repo(tmp_path / "repo")
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    out = Path(yaml.safe_load((ROOT / "dvc.yaml").read_text())["vars"][1]["out"])
    (repo / out / "roc").mkdir(parents=True)
    (repo / out / CURVE_FILE).write_text(CURVE)
    (repo / out / "roc" / "SyntheticMarket1501.csv").write_text(ROC)

    sh(str(BIN / "dvc"), "plots", "show", "-o", "plots", cwd=repo)

    html = (repo / "plots" / "index.html").read_text()
    plots = plotted(html)
    assert set(plots) == {"training_loss", "learning_rate", "ROC"}  # each drawn once
    curve = [{"iteration": i, "total_loss": loss, "lr": lr}
             for i, loss, lr in (("1", "5.5", "0.1"), ("2", "4.25", "0.2"), ("3", "3.0", "0.3"))]
    assert plots["training_loss"][1] == plots["learning_rate"][1] == curve
    for plot_id, (x, y) in {"training_loss": ("iteration", "total_loss"),
                            "learning_rate": ("iteration", "lr"), "ROC": ("far", "tar")}.items():
        axes = set(re.findall(r'"field": "([^"]+)"', plots[plot_id][0]))
        assert {x, y} <= axes and not ({"total_loss", "lr", "tar"} - {y}) & axes
    assert plots["ROC"][1] == [{"threshold": "0.9", "far": "0", "tar": "0.125"},
                            {"threshold": "0.5", "far": "0.25", "tar": "0.75"},
                            {"threshold": "0.1", "far": "1", "tar": "1"}]
    for title in ("Training loss", "Learning rate", "ROC on SyntheticMarket1501"):
        assert title in html
