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
