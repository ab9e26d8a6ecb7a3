"""Evaluator: TEST.* options from the config, per-test-set protocol, ROC files, main-process
metrics under several ranks."""
import numpy as np
import pytest

from reid.config import load_config
from reid.data.datasets import DATASET_REGISTRY
from reid.errors import ReidError
from reid.evaluation import evaluator as evaluator_module
from reid.evaluation import query_expansion, rerank
from reid.evaluation.distance import compute_distance
from reid.evaluation.evaluator import Evaluator, evaluate_model
from reid.evaluation.features import evaluate_features
from reid.evaluation.rank import summarize
from reid.evaluation.results import SetResult
from test_evaluation_extract import FirstRowModel, make_loader

# 4 queries then 12 gallery items of 4 identities, 3 cameras; features are 3-D rows.
RNG = np.random.default_rng(0)
ROWS = RNG.integers(-3, 4, size=(16, 3)).astype(np.float32)
PIDS = np.array([0, 1, 2, 3] + [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
CAMS = np.array([0, 0, 1, 2] + [1, 2, 0, 0, 1, 2, 1, 2, 0, 0, 1, 1])
NUM_QUERY = 4


def loaders(built):
    def build(cfg, name):
        built.append(name)
        return make_loader(ROWS, PIDS, CAMS, batch_size=5), NUM_QUERY
    return build


def config(**overrides):
    values = {"DATASETS.TESTS": '["SetA", "SetB"]', **overrides}
    return load_config(None, [str(x) for kv in values.items() for x in kv])


def expected(protocol="market", **kwargs):
    metrics = evaluate_features(ROWS[:NUM_QUERY], ROWS[NUM_QUERY:], PIDS[:NUM_QUERY],
                                PIDS[NUM_QUERY:], CAMS[:NUM_QUERY], CAMS[NUM_QUERY:],
                                protocol=protocol, **kwargs)
    return summarize(metrics.cmc, metrics.all_ap, metrics.all_inp)


def test_every_test_set_is_evaluated_and_loaders_are_reused():
    built = []
    evaluator = Evaluator(config(), build_loader=loaders(built))
    first = evaluator.evaluate(FirstRowModel(), "cpu")
    second = evaluator.evaluate(FirstRowModel(), "cpu")
    assert built == ["SetA", "SetB"]
    assert first == second == {"SetA": pytest.approx(expected()), "SetB": pytest.approx(expected())}
    assert set(first["SetA"]) == {"Rank-1", "Rank-5", "Rank-10", "mAP", "mINP"}


def test_protocol_comes_from_the_dataset_class(monkeypatch):
    class Cuhk03Like:
        eval_protocol = "cuhk03"

    class Unknown:
        eval_protocol = "viper"

    monkeypatch.setitem(DATASET_REGISTRY._objects, "Cuhk03Like", Cuhk03Like)
    monkeypatch.setitem(DATASET_REGISTRY._objects, "OddSet", Unknown)
    evaluator = Evaluator(config(**{"DATASETS.TESTS": '["Cuhk03Like"]'}), build_loader=loaders([]))
    assert evaluator.protocol_of("Cuhk03Like") == "cuhk03"
    assert evaluator.protocol_of("SetA") == "market"  # no declaration: Market protocol
    results = evaluator.evaluate(FirstRowModel(), "cpu")
    assert results["Cuhk03Like"] == pytest.approx(expected("cuhk03"))
    assert results["Cuhk03Like"] != pytest.approx(expected("market"))
    with pytest.raises(ReidError, match="unknown evaluation protocol 'viper'"):
        evaluator.protocol_of("OddSet")


def test_roc_enabled_reports_tar_and_writes_the_curve(tmp_path):
    evaluator = Evaluator(config(**{"TEST.ROC_ENABLED": "True", "DATASETS.TESTS": '["SetA"]'}),
                          output_dir=tmp_path, build_loader=loaders([]))
    results = evaluator.evaluate(FirstRowModel(), "cpu")["SetA"]
    tar_keys = ["TAR_at_FAR_1e-04", "TAR_at_FAR_1e-03", "TAR_at_FAR_1e-02"]
    assert list(results) == ["Rank-1", "Rank-5", "Rank-10", "mAP", "mINP"] + tar_keys
    metrics = evaluate_features(ROWS[:4], ROWS[4:], PIDS[:4], PIDS[4:], CAMS[:4], CAMS[4:],
                                roc=True)
    assert [results[k] for k in tar_keys] == pytest.approx(
        [100 * v for v in metrics.tar_at_far.values()])
    assert (tmp_path / "roc" / "SetA.csv").exists() and (tmp_path / "roc" / "SetA.png").exists()


def test_aqe_and_rerank_options_come_from_the_config(monkeypatch):
    calls = {}

    def stub_aqe(q, g, alpha, qe_time, qe_k, device=None):
        calls["aqe"] = (alpha, qe_time, qe_k)
        return q, g

    class StubReRanker:
        def __init__(self, q, g, k1, k2, lambda_value, metric, device=None):
            calls["rerank"] = (k1, k2, lambda_value, metric)
            self.dist = compute_distance(q, g, metric)

        def blocks(self, size):
            yield 0, len(self.dist), self.dist

    monkeypatch.setattr(query_expansion, "average_query_expansion", stub_aqe)
    monkeypatch.setattr(rerank, "ReRanker", StubReRanker)
    cfg = config(**{"DATASETS.TESTS": '["SetA"]', "TEST.AQE.ENABLED": "True",
                    "TEST.AQE.ALPHA": "2.5", "TEST.AQE.QE_K": "3", "TEST.RERANK.ENABLED": "True",
                    "TEST.RERANK.K1": "9", "TEST.RERANK.K2": "2", "TEST.RERANK.LAMBDA": "0.1",
                    "TEST.METRIC": "euclidean"})
    results = Evaluator(cfg, build_loader=loaders([])).evaluate(FirstRowModel(), "cpu")
    assert calls == {"aqe": (2.5, 1, 3), "rerank": (9, 2, 0.1, "euclidean")}
    assert results["SetA"] == pytest.approx(expected(metric="euclidean"))


def test_only_the_main_process_computes_metrics(monkeypatch):
    # This process plays rank 1 of 2: it extracts its shard but takes rank 0's metrics.
    monkeypatch.setattr(evaluator_module.comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(evaluator_module.comm, "is_main_process", lambda: False)
    monkeypatch.setattr(evaluator_module, "extract_features",
                        lambda *a, **k: (np.zeros((16, 3), np.float32), PIDS, CAMS))
    from_rank0 = SetResult({"Rank-1": 12.5})
    monkeypatch.setattr(evaluator_module.comm, "all_gather",
                        lambda mine: [("ok", from_rank0), mine])
    assert evaluate_model(FirstRowModel(), [], NUM_QUERY, "cpu") == from_rank0
    monkeypatch.setattr(evaluator_module.comm, "all_gather",
                        lambda mine: [("error", "no query has a valid gallery match"), mine])
    with pytest.raises(ReidError, match="no query has a valid gallery match"):
        evaluate_model(FirstRowModel(), [], NUM_QUERY, "cpu")


def test_main_process_shares_its_error(monkeypatch):
    sent = []
    monkeypatch.setattr(evaluator_module.comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(evaluator_module.comm, "is_main_process", lambda: True)
    monkeypatch.setattr(evaluator_module.comm, "all_gather",
                        lambda mine: sent.append(mine) or [mine])
    # Every gallery item of the query's pid shares its camera: nothing valid, a ReidError.
    loader = make_loader(ROWS[:3], np.array([5, 5, 6]), np.array([0, 0, 0]), batch_size=3)
    with pytest.raises(ReidError, match="no query has a valid gallery match"):
        evaluate_model(FirstRowModel(), loader, 1, "cpu")
    # (the first all_gather is the feature gather of extract_features)
    assert sent[-1][0] == "error" and "no query has a valid gallery match" in sent[-1][1]


def test_proposed_config_keys_override_protocol_and_fars():
    # TEST.PROTOCOL and TEST.ROC_FARS are not in the defaults yet; a config that has them wins
    # over the dataset's eval_protocol and the default FARs.
    cfg = config(**{"DATASETS.TESTS": '["SetA"]', "TEST.ROC_ENABLED": "True"}).clone()
    cfg.TEST.PROTOCOL, cfg.TEST.ROC_FARS = "cuhk03", [0.05, 0.2]
    evaluator = Evaluator(cfg, build_loader=loaders([]))
    assert evaluator.protocol_of("SetA") == "cuhk03"
    results = evaluator.evaluate(FirstRowModel(), "cpu")["SetA"]
    assert [k for k in results if k.startswith("TAR")] == ["TAR_at_FAR_5e-02", "TAR_at_FAR_2e-01"]
    assert results["Rank-1"] == pytest.approx(expected("cuhk03")["Rank-1"])


def test_options_are_typed_once_and_run_returns_the_files_written(tmp_path):
    from reid.evaluation.options import AqeOptions, EvalOptions, RerankOptions

    cfg = config(**{"DATASETS.TESTS": '["SetA"]', "TEST.ROC_ENABLED": "True",
                    "TEST.AQE.ENABLED": "True", "TEST.AQE.QE_K": "3",
                    "TEST.RERANK.ENABLED": "True", "TEST.RERANK.K1": "9"})
    options = EvalOptions.from_config(cfg)
    assert options.aqe == AqeOptions(alpha=3.0, qe_time=1, qe_k=3)
    assert options.rerank == RerankOptions(k1=9, k2=6, lambda_value=0.3)
    assert EvalOptions.from_config(config()).aqe is None
    assert EvalOptions.from_config(config()).rerank is None

    evaluator = Evaluator(config(**{"TEST.ROC_ENABLED": "True"}), output_dir=tmp_path,
                          build_loader=loaders([]))  # SetA and SetB
    run = evaluator.run(FirstRowModel(), "cpu")
    assert list(run.sets) == ["SetA", "SetB"]
    assert run.metrics == evaluator.evaluate(FirstRowModel(), "cpu")
    set_a = run.sets["SetA"]
    assert set_a.roc_files == (tmp_path / "roc" / "SetA.csv", tmp_path / "roc" / "SetA.png")
    assert set_a.examples_file == tmp_path / "examples" / "SetA.json"
    assert set_a.examples_file.exists()
    assert run.files == [*set_a.files, *run.sets["SetB"].files]


@pytest.mark.parametrize("index_type", ["Flat", "bf16"])
def test_an_index_type_evaluates_from_each_querys_candidates(tmp_path, index_type):
    """TEST.INDEX.TYPE: a Flat index (or the bf16 scan) over the whole gallery is exact;
    fewer candidates give lower bounds; the candidates' recall is reported; no retrieval
    examples are written."""
    whole = config(**{"DATASETS.TESTS": '["SetA"]', "TEST.INDEX.TYPE": index_type,
                      "TEST.INDEX.CANDIDATES": "12"})
    results = Evaluator(whole, output_dir=tmp_path, build_loader=loaders([])).evaluate(
        FirstRowModel(), "cpu")["SetA"]
    assert results.pop("candidate_recall") == pytest.approx(100.0)
    assert results == pytest.approx(expected(), abs=1e-4)
    assert not (tmp_path / "examples").exists()  # examples need whole rows of distances

    top2 = config(**{"DATASETS.TESTS": '["SetA"]', "TEST.INDEX.TYPE": index_type,
                     "TEST.INDEX.CANDIDATES": "2"})
    results = Evaluator(top2, build_loader=loaders([])).evaluate(FirstRowModel(), "cpu")["SetA"]
    exact = expected()
    assert results["Rank-1"] == pytest.approx(exact["Rank-1"])
    assert results["mAP"] <= exact["mAP"] + 1e-4 and results["mINP"] <= exact["mINP"] + 1e-4


@pytest.mark.parametrize("key, value, named", [
    ("TEST.ROC_ENABLED", "True", "TEST.ROC_ENABLED"),
    ("TEST.RERANK.ENABLED", "True", "TEST.RERANK.ENABLED"),
    ("TEST.PROTOCOL", "cuhk03", "TEST.PROTOCOL cuhk03"),
])
def test_an_index_type_refuses_what_needs_the_whole_gallery(key, value, named):
    with pytest.raises(ReidError, match=f"TEST.INDEX.TYPE 'IVF64,Flat' .*cannot serve {named}, "
                       "which rank the whole gallery; set TEST.INDEX.TYPE exact"):
        config(**{"TEST.INDEX.TYPE": "IVF64,Flat", key: value})


def test_candidates_must_be_at_least_one():
    with pytest.raises(ReidError, match="TEST.INDEX.CANDIDATES must be >= 1"):
        config(**{"TEST.INDEX.CANDIDATES": "0"})
