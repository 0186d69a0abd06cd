import pytest

from latentprobe.cli import main
from latentprobe.models import list_models


@pytest.mark.parametrize("name", list_models())
def test_summary_of_every_model(name, capsys):
    main(["summary", name])
    out = capsys.readouterr().out
    assert "Total params" in out and "MACs per image" in out and "latent:" in out


def test_summary_options_come_from_its_config():
    with pytest.raises(SystemExit, match="--depth must be at least 1, got 0"):
        main(["summary", "conv_ae", "--depth", "0"])


def test_a_model_too_large_to_build_is_one_line():
    """The summary builds the model only after the meta-device check: a size no memory holds is
    one line with what it would need, not an allocation traceback."""
    with pytest.raises(SystemExit) as stop:
        main(["summary", "conv_ae", "--model-args", "latent_dim=99999999999"])
    error = str(stop.value.code)
    assert error.startswith("error: conv_ae with latent_dim=99999999999 has ") and "GiB to train" in error
    assert "\n" not in error
