"""The probes over cached features: one setting (the study's), the converged logistic probe against
scikit-learn, and the refit on training + validation that reads the test set only after the choice."""

import pytest
import torch
import torch.nn.functional as F

from latentprobe.options import EvalConfig, ProbeConfig
from latentprobe.probe import evaluate
from latentprobe.probe.evaluate import evaluate_features
from latentprobe.probe.features import FeatureSet

pytestmark = pytest.mark.usefixtures("one_thread")


def _blobs(n: int, seed: int, spread: float = 1.0, dim: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Four Gaussian classes in ``dim`` values: apart for spread 1, overlapping for larger spreads."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=gen)
    centres = torch.eye(dim)[:4] * 6
    return centres[labels] + spread * torch.randn(n, dim, generator=gen), labels


def _data(spread: float = 1.0, sizes=(800, 200, 400), dim: int = 16) -> FeatureSet:
    splits = {name: _blobs(n, seed, spread, dim) for name, n, seed in zip(("train", "val", "test"), sizes, (0, 1, 2))}
    return FeatureSet({k: v[0] for k, v in splits.items()}, {k: v[1] for k, v in splits.items()}, ["a", "b", "c", "d"])


def test_one_probe_one_setting_separates_a_separable_set():
    for head in ("linear", "bn_linear", "logistic"):
        cfg = ProbeConfig(head=head, probe_epochs=20, probe_batch_size=32).evaluation()
        records, _ = evaluate_features(_data(), cfg, torch.device("cpu"))
        result = records[head]
        assert result["test"]["mean"] > 0.95 and result["test"]["n"] == 1, head
        history = result["seeds"][0]["history"]
        if head == "logistic":  # solved: the passes L-BFGS took, the last one kept
            assert 1 < len(history) <= 20 and result["chosen"]["val_acc"] == history[-1]["val_acc"]
        else:
            assert len(history) == 20 and result["chosen"]["val_acc"] == max(h["val_acc"] for h in history)
        assert sum(map(sum, result["confusion"])) == 400
        if head == "logistic":  # solved: no lr, batch, patience or seed decides its numbers
            assert result["protocol"] == {"probe_weight_decays": [0.0], "probe_epochs": 20, "flip_train": False,
                                          "refit": False, "solver": "lbfgs", "tolerance": 1e-4}
            assert [point["lr"] for point in result["grid"]] == [None]
        else:
            assert result["protocol"]["probe_patience"] is None and result["protocol"]["probe_seeds"] == 1


def test_the_converged_logistic_probe_agrees_with_scikit_learn():
    """The same objective (mean NLL + λ/2 |W|² on standardised features, the bias free) solved by
    L-BFGS in scikit-learn and in our probe: the same test accuracy and the same probabilities."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    data, penalty = _data(spread=4.0, sizes=(1500, 300, 2000), dim=32), 1e-2
    cfg = EvalConfig(probes=["logistic"], probe_lrs=[1e-2], probe_weight_decays=[penalty], probe_epochs=60,
                     probe_patience=None, probe_schedule="cosine", probe_seeds=1, probe_batch_size=64)
    records, heads = evaluate_features(data, cfg, torch.device("cpu"))
    ours, (head, _) = records["logistic"], heads["logistic"]
    scaler = StandardScaler().fit(data.features["train"].numpy())
    sklearn = LogisticRegression(C=1 / (penalty * len(data.labels["train"])), max_iter=5000, tol=1e-8).fit(
        scaler.transform(data.features["train"].numpy()), data.labels["train"].numpy())
    reference = sklearn.score(scaler.transform(data.features["test"].numpy()), data.labels["test"].numpy())
    assert 0.5 < reference < 0.95  # a set where the probes can differ
    assert abs(ours["test"]["mean"] - reference) <= 0.003
    with torch.no_grad():
        probabilities = head(data.features["test"]).exp().numpy()
    expected = sklearn.predict_proba(scaler.transform(data.features["test"].numpy()))
    assert abs(probabilities - expected).max() < 2e-3
    convergence = ours["seeds"][0]["convergence"]
    assert convergence["gradient_norm"] < 0.01 * convergence["initial_gradient_norm"]


def test_a_refit_reads_the_test_set_only_after_the_choice(monkeypatch):
    events = []
    fit_heads, predict = evaluate.fit_heads, evaluate.predict

    def logged_fit(kind, train, val, *args, **kwargs):
        events.append(("refit" if val is None else "grid", len(train[1]), len(kwargs["settings"])))
        return fit_heads(kind, train, val, *args, **kwargs)

    def logged_predict(head, features, *args, **kwargs):
        events.append(("test", len(features)))
        return predict(head, features, *args, **kwargs)

    monkeypatch.setattr(evaluate, "fit_heads", logged_fit)
    monkeypatch.setattr(evaluate, "predict", logged_predict)
    cfg = EvalConfig(probes=["bn_linear", "logistic"], probe_lrs=[1e-3, 1e-2], probe_weight_decays=[0.0, 1e-2],
                     probe_epochs=5, probe_seeds=2, refit=True, probe_batch_size=64)
    results = evaluate_features(_data(spread=3.0), cfg, torch.device("cpu"))[0]
    # the grid on training alone, then per seed a refit on training + validation and one test reading;
    # the logistic probe takes no lr (one fit per weight decay) and its optimum no seed: one refit, one reading
    assert events == [("grid", 800, 4), ("refit", 1000, 1), ("test", 400), ("refit", 1000, 1), ("test", 400),
                      ("grid", 800, 2), ("refit", 1000, 1), ("test", 400)]
    bn_linear, logistic = results["bn_linear"], results["logistic"]
    assert all(seed["best_epoch"] == bn_linear["chosen"]["best_epoch"] and seed["val_acc"] is None
               for seed in bn_linear["seeds"])
    assert bn_linear["protocol"]["refit"] is True and bn_linear["test"]["n"] == 2
    assert logistic["deterministic"] and logistic["test"]["n"] == 1 and logistic["seeds"][0]["val_acc"] is None


def test_the_penalty_path_reaches_each_cold_optimum_in_fewer_passes():
    """Each penalty started from the last one's solution ends where a fit from zero weights ends
    (the optimum is unique), in fewer passes; a head carried over to other standardisation
    statistics computes the same logits."""
    from latentprobe.probe.heads import _carry_over, fit_heads

    data = _data(spread=4.0, sizes=(1500, 300, 400), dim=32)
    train = (data.features["train"], data.labels["train"])
    val = (data.features["val"], data.labels["val"])
    penalties = [(0.0, 1e-1), (0.0, 1e-2), (0.0, 1e-3)]
    path = fit_heads("logistic", train, val, 4, settings=penalties, epochs=500)
    cold = [fit_heads("logistic", train, val, 4, settings=[setting], epochs=500)[0] for setting in penalties]
    for warm, alone in zip(path, cold):
        assert torch.allclose(warm.head.linear.weight, alone.head.linear.weight, atol=2e-3)
        assert warm.val_acc == alone.val_acc
    assert path[0].best_epoch == cold[0].best_epoch  # the largest penalty: from zero weights, as alone
    assert sum(fit.best_epoch for fit in path[1:]) < sum(fit.best_epoch for fit in cold[1:])

    other = fit_heads("logistic", (train[0][:700] * 3 + 1, train[1][:700]), None, 4, settings=[(0.0, 1e-2)],
                      epochs=3)[0].head  # other statistics
    _carry_over(path[1].head, other)
    with torch.no_grad():
        assert torch.allclose(other(data.features["test"]), path[1].head(data.features["test"]), atol=1e-4)


def test_a_head_bank_folds_batchnorm_as_the_head_applies_it():
    import copy

    from latentprobe.probe.heads import HeadBank, build_head

    torch.manual_seed(0)
    head = build_head("bn_linear", 50, 10)
    bank = HeadBank([copy.deepcopy(head)])
    features = torch.randn(64, 50) * 5 + 20  # a mean far from 0: the variance is taken around it
    for mode in ("train", "eval"):
        getattr(head, mode)(), getattr(bank, mode)()
        for batch in features.split(32):
            torch.testing.assert_close(bank(batch)[0], head(batch), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bank.norm.running_var, head.norm.running_var)
    torch.testing.assert_close(bank.norm.running_mean, head.norm.running_mean)


def test_the_low_rank_head_is_a_bottleneck_at_every_region_then_a_linear_map():
    """Its weight, by hand: code c at region g reaches class k through the bottleneck's rank
    channels; the head is linear, its weight of rank ≤ rank across codes; the head bank runs it as
    it runs itself."""
    import copy

    from latentprobe.probe.heads import HeadBank, build_head

    torch.manual_seed(0)
    codes, regions, classes, rank = 6, 4, 3, 2
    head = build_head("low_rank", codes * regions, classes, rank=rank, regions=regions).eval()
    layer = head.linear
    readout = layer.readout.view(rank, regions, classes)
    expected = torch.stack([torch.stack([layer.bottleneck[c] @ readout[:, g, k] for c in range(codes)
                                         for g in range(regions)]) for k in range(classes)])
    torch.testing.assert_close(layer.weight, expected)
    across_codes = layer.weight.detach().view(classes, codes, regions).permute(1, 0, 2).reshape(codes, -1)
    assert torch.linalg.matrix_rank(across_codes) == rank
    x = torch.randn(8, codes * regions)
    logits = F.linear(head.norm(x), layer.weight, layer.bias)
    torch.testing.assert_close(head(x), logits.log_softmax(1))
    torch.testing.assert_close(HeadBank([copy.deepcopy(head)]).eval()(x)[0], head(x), atol=1e-5, rtol=1e-5)
    full = build_head("bn_linear", codes * regions, classes).eval()
    full.load_state_dict(head.folded_state())  # the BN + linear head it is
    torch.testing.assert_close(full(x), head(x))
    with pytest.raises(ValueError, match="does not split into 5 regions"):
        build_head("low_rank", codes * regions, classes, rank=rank, regions=5)


def test_the_low_rank_probe_reads_a_pooled_latent_and_names_its_rank():
    """A latent whose class lives in one channel at every region: the low-rank probe separates it,
    reading codes × regions as laid out, and its rank is part of its protocol."""
    data = _data(dim=16)
    data.regions = 4  # 4 codes × 4 regions
    cfg = EvalConfig(probes=["low_rank"], probe_rank=4, probe_lrs=[3e-3], probe_weight_decays=[0.0], probe_seeds=1,
                     probe_epochs=20, probe_batch_size=32)
    records, heads = evaluate_features(data, cfg, torch.device("cpu"))
    assert records["low_rank"]["test"]["mean"] > 0.95
    assert records["low_rank"]["protocol"]["probe_rank"] == 4
    head = heads["low_rank"][0]
    assert head.linear.bottleneck.shape == (4, 4) and head.linear.readout.shape == (4, 4 * 4)
