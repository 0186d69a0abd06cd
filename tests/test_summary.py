import pytest

from latentprobe.cli import main
from latentprobe.models import list_models


@pytest.mark.parametrize("name", list_models())
def test_summary_of_every_model(name, capsys):
    main(["summary", name])
    out = capsys.readouterr().out
    assert "Total params" in out and "MACs per image" in out and "latent:" in out
