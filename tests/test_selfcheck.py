from gridcam import selfcheck
from gridcam.cli import main


def test_selfcheck_step_is_finite_and_reaches_parameters(capsys):
    out = selfcheck.run(arch="tiny_resnet", size=64, batch=4)
    assert out["gc"] > 0 and out["grad_norm"] > 0
    assert main(["selfcheck"]) == 0
    assert "OK" in capsys.readouterr().out


def test_cli_lists_models(capsys):
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert "resnet50" in text and "tiny_resnet" in text and "vgg16_bn" in text
