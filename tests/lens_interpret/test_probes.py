"""``coglens probe`` and ``coglens.lens.interpret.probes``: on activations with a planted linear feature, stored
through the lens writer, a probe finds the feature, its control task and pure noise stay at chance, and the
numbers are the ones a hand-written cross-validation gives."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import get_args

import numpy as np
import pytest
import typer
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler
from typer.testing import CliRunner

from coglens.cli import probe as probe_cli
from coglens.lens import ActivationNotFoundError, ActivationRecord, RunNotFoundError, SampleRecord, open_writer
from coglens.lens.interpret.probes import (
    POOLS,
    PROBE_KINDS,
    ProbeError,
    ProbeResult,
    load_features,
    probe_features,
    probe_modules,
    stored_activations,
)
from coglens.lens.store.reader import open as open_db

N, HIDDEN, TOKENS = 60, 16, 3
LABELS = ["red" if i % 2 else "blue" for i in range(N)]  # balanced: chance and the baseline are 0.5
SIGNAL = 3.0  # the planted feature: +-3 standard deviations of the noise, on feature 0


def planted_activations(seed: int = 0) -> dict[str, np.ndarray]:
    """Per module, [N, ...] activations in the order a run of the model would store them (not alphabetical)."""
    rng = np.random.default_rng(seed)
    sign = np.where(np.array(LABELS) == "red", 1.0, -1.0)
    vision = rng.standard_normal((N, HIDDEN))
    vision[:, 0] += SIGNAL * sign
    layer0 = rng.standard_normal((N, TOKENS, HIDDEN))  # the feature in the last token only
    layer0[:, -1, 0] += SIGNAL * sign
    layer1 = rng.standard_normal((N, 1, HIDDEN))  # pure noise, one token
    return {"model.vision": vision, "model.layers.0": layer0, "model.layers.1": layer1}


def write_run(target: str, modules: dict[str, np.ndarray], labels: list[str | None], run: str = "probe") -> str:
    """Store `modules` ([n, ...] each) as a run of `target` through the lens writer, in two batches."""
    keys = [f"s{i:02d}" for i in range(len(labels))]
    with open_writer(target) as writer:
        run_id = writer.start_run(run)
        for batch in (slice(0, len(keys) // 2), slice(len(keys) // 2, None)):
            samples = [SampleRecord(key=key, prompt="What colour?", label=label)
                       for key, label in zip(keys[batch], labels[batch], strict=True)]
            activations = [ActivationRecord(sample.key, module, values[keys.index(sample.key)].astype(np.float32))
                           for sample in samples for module, values in modules.items()]
            writer.write_batch(run_id, samples, activations)
        writer.mark_finished(run_id)
    return target


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> str:
    return write_run(str(tmp_path_factory.mktemp("probes") / "lens.db"), planted_activations(), LABELS)


@pytest.fixture(scope="module")
def results(db) -> dict[str, ProbeResult]:
    """The planted feature and pure noise ([1, hidden]: no pool needed), with a 30-shuffle permutation test."""
    probed = probe_modules(db, modules=["model.vision", "model.layers.1"], permutations=30, seed=0)
    return {result.module: result for result in probed}


def test_the_probe_finds_the_planted_feature_and_its_control_does_not(results):
    result = results["model.vision"]
    assert result.accuracy >= 0.95
    assert result.p_value == pytest.approx(1 / 31)  # no shuffle of the labels comes close: the smallest p possible
    assert abs(result.control_accuracy - 0.5) <= 0.15
    assert result.selectivity == pytest.approx(result.accuracy - result.control_accuracy)
    assert result.selectivity >= 0.3
    assert (result.baseline, result.n_samples, result.n_classes, result.n_features) == (0.5, N, 2, HIDDEN)
    assert len(result.fold_accuracies) == len(result.control_fold_accuracies) == 5
    assert result.accuracy == pytest.approx(np.mean(result.fold_accuracies))
    assert result.accuracy_std == pytest.approx(np.std(result.fold_accuracies))
    assert result.pool is None


def test_pure_noise_stays_at_chance_and_is_not_significant(results):
    result = results["model.layers.1"]
    assert abs(result.accuracy - 0.5) <= 0.2
    assert result.p_value > 0.05
    assert result.pool is None and result.n_features == HIDDEN


def test_pooling_picks_the_tokens_asked_for(db):
    raw = planted_activations()["model.layers.0"].astype(np.float32)
    with open_db(db) as lens:
        for pool, expected in (("mean", raw.mean(1)), ("first", raw[:, 0]), ("last", raw[:, -1])):
            x, labels, applied = load_features(lens, "model.layers.0", pool=pool)
            np.testing.assert_allclose(x, expected, rtol=1e-6)
            assert labels == LABELS and applied == pool
    last, first = (probe_modules(db, modules=["model.layers.0"], pool=pool, permutations=0)[0]
                   for pool in ("last", "first"))
    assert last.accuracy >= 0.95 and last.pool == "last"
    assert abs(first.accuracy - 0.5) <= 0.2  # the first token holds no feature
    assert last.p_value is None  # 0 permutations: no test


def test_the_numbers_are_a_hand_written_cross_validation(db):
    """Folds stratified on the real labels and shared with the control; the scaler sees the training split only."""
    x = planted_activations()["model.vision"].astype(np.float32)
    y = np.array(LABELS)
    control_y = np.random.default_rng(7).permutation(y)
    folds = list(StratifiedKFold(n_splits=4, shuffle=True, random_state=7).split(x, y))

    def fold_accuracies(labels: np.ndarray) -> list[float]:
        accuracies = []
        for train, test in folds:
            scaler = StandardScaler().fit(x[train])
            model = LogisticRegression(max_iter=1000).fit(scaler.transform(x[train]), labels[train])
            accuracies.append(float((model.predict(scaler.transform(x[test])) == labels[test]).mean()))
        return accuracies

    (result,) = probe_modules(db, modules=["model.vision"], folds=4, permutations=0, seed=7)
    assert result.fold_accuracies == pytest.approx(fold_accuracies(y))
    assert result.control_fold_accuracies == pytest.approx(fold_accuracies(control_y))


def test_the_same_seed_gives_the_same_numbers(db):
    def run(seed: int, permutations: int) -> ProbeResult:
        return probe_modules(db, modules=["model.layers.1"], permutations=permutations, seed=seed)[0]

    assert run(3, 5) == run(3, 5)
    assert run(3, 0).fold_accuracies != run(4, 0).fold_accuracies


def test_mlp_probe_finds_the_feature():
    rng = np.random.default_rng(1)
    y = np.array(LABELS)
    x = rng.standard_normal((N, 8))
    x[:, 0] += np.where(y == "red", SIGNAL, -SIGNAL)
    result = probe_features(x, y, probe="mlp", permutations=0, folds=3)
    assert result.accuracy >= 0.9 and result.probe == "mlp"
    assert probe_features(x, y, probe="mlp", permutations=0, folds=3) == result


@pytest.mark.parametrize("target", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_every_module_by_default_in_the_order_the_model_ran_them(request, tmp_path, target):
    url = str(tmp_path / "lens.db") if target == "sqlite" else request.getfixturevalue("pg_url")
    modules = {name: values for name, values in planted_activations().items() if name != "model.layers.0"}
    modules["lm_head"] = planted_activations(seed=1)["model.vision"]  # stored last, alphabetically first
    write_run(url, modules, LABELS)
    with open_db(url) as lens:
        assert stored_activations(lens) == [(name, "output", 0) for name in modules]
    results = probe_modules(url, permutations=0)
    assert [result.module for result in results] == list(modules)


def test_labels_classes_and_folds_that_cannot_be_probed(tmp_path):
    x = planted_activations()["model.vision"]
    unlabelled = write_run(str(tmp_path / "unlabelled.db"), {"model.vision": x}, [None] * N)
    with pytest.raises(ProbeError, match=r"no sample of module 'model.vision' .* has a label: give the inputs labels"):
        probe_modules(unlabelled)
    one_class = write_run(str(tmp_path / "one.db"), {"model.vision": x}, ["red"] * N)
    with pytest.raises(ProbeError, match=r"every labelled sample has the label 'red'; a probe needs two labels"):
        probe_modules(one_class)
    rare = write_run(str(tmp_path / "rare.db"), {"model.vision": x}, ["green"] * 3 + LABELS[3:])
    with pytest.raises(ProbeError, match=r"label 'green' has 3 sample\(s\), fewer than the 5 folds .* at most 3"):
        probe_modules(rare)
    assert probe_modules(rare, folds=3, permutations=0)[0].n_classes == 3
    with pytest.raises(ProbeError, match="folds must be at least 2"):
        probe_features(x, LABELS, folds=1)
    with pytest.raises(ProbeError, match="NaN or infinite"):
        probe_features(np.full((N, 2), np.inf), LABELS)


def test_activation_shapes_and_names_that_cannot_be_probed(db, tmp_path):
    with pytest.raises(ProbeError, match=r"stores \[tokens, hidden\] = \[3, 16\] for sample 's00': .* mean \| last"):
        probe_modules(db, modules=["model.layers.0"])
    maps = write_run(str(tmp_path / "maps.db"), {"conv": np.zeros((N, 2, 3, 4))}, LABELS)
    with pytest.raises(ProbeError, match=r"stores \[2, 3, 4\] for sample 's00'; a probe takes one vector"):
        probe_modules(maps, pool="mean")
    with pytest.raises(ActivationNotFoundError, match="no activations of module 'model.layer.1'.*did you mean"):
        probe_modules(db, modules=["model.layer.1"])
    with pytest.raises(ActivationNotFoundError, match="has no io='input' step=0 activations"):
        probe_modules(db, modules=["model.vision"], ios=["input"])
    with pytest.raises(ProbeError, match=r"run 'probe' stores no io='output' step=2 activations \(it stores io="):
        probe_modules(db, steps=[2])
    with pytest.raises(RunNotFoundError, match="no run 'other'"):
        probe_modules(db, run="other")


def invoke(*args: str):
    app = typer.Typer()  # coglens.cli.main registers the command as `coglens probe`
    app.command()(probe_cli.probe)
    return CliRunner().invoke(app, list(args))


def test_cli_prints_the_table_and_writes_the_plot_and_json(db, tmp_path):
    plot, out = tmp_path / "plots" / "probes.png", tmp_path / "probes.json"
    result = invoke(db, "--pool", "last", "--folds", "3", "--permutations", "2", "--plot", str(plot),
                    "--json", str(out))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "linear probes on run 'probe': 3-fold cross-validation" in lines[0]
    rows = [line for line in lines if "model." in line]
    assert [row.split()[1] for row in rows] == ["model.vision", "model.layers.0", "model.layers.1"]
    expected = probe_modules(db, pool="last", folds=3, permutations=2)
    vision = expected[0]
    assert f"{vision.accuracy:.3f} ± {vision.accuracy_std:.3f}" in rows[0]
    assert f"{vision.p_value:.3g}" in rows[0] and f"{vision.baseline:.3f}" in rows[0]
    with Image.open(plot) as image:
        assert image.format == "PNG" and image.width > 300
    document = json.loads(out.read_text())
    assert document["run"] == "probe"
    assert document["results"] == json.loads(json.dumps([asdict(r) for r in expected]))


def test_cli_errors(db, tmp_path):
    result = invoke(db, "--run", "other")
    assert result.exit_code == 1 and "error: no run 'other'" in result.output
    result = invoke(db, "--module", "model.layers.0")
    assert isinstance(result.exception, ProbeError) and "(--pool)" in str(result.exception)  # main prints it
    result = invoke(db, "--plot", str(tmp_path / "probes.jpg"))
    assert result.exit_code == 2 and ".png" in result.output
    result = invoke(str(tmp_path / "missing.db"))
    assert result.exit_code == 1 and "error: no database at" in result.output


def test_the_cli_choices_are_the_library_ones():
    assert get_args(probe_cli.ProbeKind) == PROBE_KINDS
    assert get_args(probe_cli.Pool) == POOLS
