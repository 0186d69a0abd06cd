import re

import pytest
from conftest import write_cifar10, write_cifar100
from eval_helpers import fast_config, train_tiny_run

from latentprobe.metrics import fmt
from latentprobe.probe.evaluate import cpu_threads, evaluate_run, load_eval
from latentprobe.report.compare import CompareConfig, write_comparison
from latentprobe.report.results import collect_rows
from latentprobe.runs import write_json

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.fixture(scope="module")
def cifar10_runs(tmp_path_factory):
    """Two runs that differ only in their seed, and one of another latent size."""
    root = tmp_path_factory.mktemp("compare10")
    data = write_cifar10(root / "data", per_batch=40, test=60)
    runs = [train_tiny_run(data, root / "ae16_s0"), train_tiny_run(data, root / "ae16_s1", seed=1),
            train_tiny_run(data, root / "ae8", latent_dim=8)]
    with cpu_threads(1):
        for run in runs:
            evaluate_run(run, fast_config(data_dir=str(data)))
    write_json(runs[0] / "finetune.json", {"test_acc": 0.5, "val_acc": 0.55})
    return root, data, runs


def test_runs_differing_only_in_seed_share_a_row(cifar10_runs):
    _, _, runs = cifar10_runs
    rows = collect_rows([load_eval(run) for run in runs])
    labels = [row.label for row in rows]
    assert labels[:3] == ["conv_ae 16-d (c1=4, c2=8, 1 epoch)", "conv_ae 16-d, untrained weights",
                          "conv_ae 8-d (c1=4, c2=8, 1 epoch)"]  # the model options and epochs in the label
    model = rows[0]
    assert len(model.evals) == 2 and len(model.accuracies["linear"]) == 4  # 2 runs × 2 probe seeds
    assert len(model.accuracies["knn_3"]) == 2  # deterministic: one value per run
    assert model.finetune == [0.5] and rows[2].finetune == []
    # raw pixels on the same split count once; PCA and random baselines once per size and init
    assert labels.count("raw pixels 3072-d") == 1
    pixels = rows[labels.index("raw pixels 3072-d")]
    assert len(pixels.accuracies["linear"]) == 4  # seeds 0 and 1 carve different validation splits
    assert {"PCA of pixels 16-d", "PCA of pixels 8-d", "conv_ae 8-d, untrained weights"} <= set(labels)
    assert rows[1].encoder == labels[0] and rows[0].family == "conv_ae (c1=4, c2=8)" == rows[2].family


def test_fmt_shows_mean_std_and_count():
    assert fmt([0.5, 0.7]) == "60.00 ± 14.14 (2)"
    assert fmt([0.25]) == "25.00 (1)"  # one value has no spread to show
    assert fmt([]) == "not run"


def test_html_report_is_self_contained_and_has_every_figure_and_table(cifar10_runs, tmp_path):
    _, data, runs = cifar10_runs
    stale = tmp_path / "report" / "figures" / "confusion_removed_row.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an earlier comparison's figure")
    html_path = write_comparison(runs, CompareConfig(out=str(tmp_path / "report"), tsne_points=50, device="cpu",
                                                     data_dir=str(data)))
    assert not stale.exists()
    markdown = (tmp_path / "report" / "report.md").read_text()
    html = html_path.read_text()
    figures = re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", markdown)
    pngs = sorted(p.name for p in (tmp_path / "report" / "figures").glob("*.png"))
    assert sorted(f.split("/")[1] for f in figures) == pngs
    assert {"accuracy.png", "tsne.png", "confusion_conv_ae_16_d.png", "per_class_recall.png", "latent_size.png",
            "compute.png"} <= set(pngs)
    assert html.count('<img alt="') == len(figures) == html.count('src="data:image/png;base64,')
    markdown_tables = len(re.findall(r"^\|---", markdown, flags=re.M))
    assert html.count("<table>") == markdown_tables >= 5  # accuracy, models, selection, 2 confusions
    assert not re.search(r"(src|href)=\"(?!data:)", html)  # nothing to fetch: opens from disk, offline
    assert markdown.startswith("# Which representation makes the best probe?\n\n## Verdict\n\n- **Answer: ")
    assert str(tmp_path) not in markdown and "`../ae16_s0`" not in markdown  # paths relative to the report
    for text in ("BN + linear %", "kNN k=3 %", "MLP %", "fine-tuned %", "raw pixels 3072-d", "→", "mean ± std (n)"):
        assert text in markdown and text.replace("→", "&#8594;") in html or text in html, text
    accuracy_line = next(line for line in markdown.splitlines() if line.startswith("| conv_ae 16-d (c1=4"))
    assert accuracy_line.endswith("| 50.00 (1) |")  # finetune.json of the first run
    assert accuracy_line.count("(4)") == 3 and accuracy_line.count("(2)") == 2  # probe seeds × runs; kNN: runs
    model_line = [line for line in markdown.splitlines() if line.startswith("| conv_ae 16-d (c1=4")][1]
    assert model_line.count("(2)") == 4  # MSE, PSNR, steps and wall time over the two pretraining runs


def test_cifar100_fine_and_coarse_labels_run_through_compare(tmp_path):
    data = write_cifar100(tmp_path / "data", train=400, test=200)
    run = train_tiny_run(data, tmp_path / "run100", dataset="cifar100", val_size=100)
    for label_type, classes in (("fine", 100), ("coarse", 20)):
        record = evaluate_run(run, fast_config(data_dir=str(data), label_type=label_type, probe_seeds=1,
                                               baselines=["pca"], probes=["bn_linear", "knn"]))
        assert len(record["class_names"]) == classes
        out = tmp_path / f"report_{label_type}"
        write_comparison([run], CompareConfig(out=str(out), label_type=label_type, device="cpu", data_dir=str(data),
                                              tsne_points=60 if label_type == "fine" else 0))
        markdown = (out / "report.md").read_text()
        assert (out / "figures" / "confusion_conv_ae_16_d.png").exists()
        assert "Most confused:" in markdown and " → " in markdown
        full_matrix = "true \\ predicted" in markdown
        assert full_matrix == (classes == 20)  # 100 classes: top confusions instead of a 100×100 table
        assert (run / ("eval.json" if label_type == "fine" else "eval_coarse.json")).exists()
    assert (run / "classifier_coarse.pt").exists()


def test_compare_needs_evaluated_runs(tmp_path):
    run = train_tiny_run(write_cifar10(tmp_path / "data"), tmp_path / "plain")
    with pytest.raises(FileNotFoundError, match="latentprobe evaluate"):
        write_comparison([run], CompareConfig(out=str(tmp_path / "out")))


def test_a_row_with_other_settings_is_named_by_what_differs(cifar10_runs):
    import copy

    _, _, runs = cifar10_runs
    plain = load_eval(runs[0])
    denoising = copy.deepcopy(plain)
    denoising["run"] = str(runs[0].parent / "ae16_denoising")
    denoising["train_config"]["model_args"] = {**plain["train_config"]["model_args"], "noise": 0.5}
    denoising["train_config"]["clip_grad"] = 1.0
    labels = [row.label for row in collect_rows([plain, denoising]) if row.kind == "encoder"]
    assert labels == ["conv_ae 16-d (c1=4, c2=8, 1 epoch)", "conv_ae 16-d (c1=4, c2=8, noise=0.5, 1 epoch)"]


def test_report_over_evaluated_runs_is_the_comparison(cifar10_runs, tmp_path):
    from latentprobe.cli import main

    _, data, runs = cifar10_runs
    main(["report", *map(str, runs), "--out", str(tmp_path / "via_report"), "--tsne-points", "0", "--device", "cpu",
          "--data-dir", str(data)])
    write_comparison(runs, CompareConfig(out=str(tmp_path / "via_compare"), tsne_points=0, device="cpu",
                                         data_dir=str(data)))
    tables = [[line for line in (tmp_path / d / "report.md").read_text().splitlines() if line.startswith("|")]
              for d in ("via_report", "via_compare")]
    assert tables[0] == tables[1] and len(tables[0]) > 10


def test_the_committed_gpu_run_rebuilds_to_the_committed_report(tmp_path):
    """docs/mae_gpu holds an evaluated run's files (no checkpoint): the report rebuilt from them by
    today's code has the tables of docs/mae_gpu/report and the numbers docs/RESULTS.md quotes."""
    from pathlib import Path

    docs = Path(__file__).parents[1] / "docs"
    write_comparison([docs / "mae_gpu"], CompareConfig(out=str(tmp_path / "rebuilt"), tsne_points=0))
    tables = [[line for line in (d / "report.md").read_text().splitlines() if line.startswith("|")]
              for d in (tmp_path / "rebuilt", docs / "mae_gpu" / "report")]
    assert tables[0] == tables[1]
    assert "cls pooling (mask_ratio=0.75, norm_pix_loss=False, pool=cls, 330 epochs) | 192 | **64.70 ± 0.22 (3)** | " \
           "**65.12 ± 0.42 (3)** |" in tables[0][2]
