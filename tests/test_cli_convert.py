"""``fcnseg convert``: the command users run on the published Caffe models."""

import fcnseg
from fcnseg.cli import main


def test_convert_caffe_writes_a_checkpoint(caffe_fixtures, tmp_path, capsys):
    out = tmp_path / "fcn8s.pt"
    assert (
        main(
            [
                "convert",
                "caffe",
                str(caffe_fixtures / "fcn8s_v1layers.caffemodel"),
                "--arch",
                "fcn8s",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "fcn8s, 21 classes, widths 4,8,16,32,32,64, preprocess caffe" in capsys.readouterr().out
    model = fcnseg.load(out)
    assert model.meta["class_names"][15] == "person"
    assert model.meta["preprocess"] == "caffe"


def test_convert_caffe_with_wrong_arch_fails_cleanly(caffe_fixtures, tmp_path, capsys):
    code = main(
        [
            "convert",
            "caffe",
            str(caffe_fixtures / "fcn32s.caffemodel"),
            "--arch",
            "fcn8s",
            "--out",
            str(tmp_path / "x.pt"),
        ]
    )
    assert code == 2
    assert "holds an fcn32s model" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_convert_class_names_must_match(caffe_fixtures, tmp_path, capsys):
    names = tmp_path / "names.txt"
    names.write_text("a\nb\n")
    code = main(
        [
            "convert",
            "caffe",
            str(caffe_fixtures / "fcn32s.caffemodel"),
            "--out",
            str(tmp_path / "x.pt"),
            "--classes",
            str(names),
        ]
    )
    assert code == 2 and "lists 2 class names; the model has 21" in capsys.readouterr().err
