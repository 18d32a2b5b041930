from omni.cli import _parser, _positionals_first


def test_embed_accepts_files_after_options():
    argv = ["embed", "BUNDLE", "--modality", "image", "a.png", "b.png", "--out", "x.npy"]
    args = _parser().parse_args(["embed"] + _positionals_first(argv[1:], {"--modality", "--out", "--text"}))
    assert args.bundle == "BUNDLE" and args.files == ["a.png", "b.png"]
    assert args.modality == "image" and args.out == "x.npy"


def test_embed_texts():
    argv = ["BUNDLE", "--modality", "text", "--text", "a red square", "--text", "two", "--out", "t.npy"]
    args = _parser().parse_args(["embed"] + _positionals_first(argv, {"--modality", "--out", "--text"}))
    assert args.files == [] and args.text == ["a red square", "two"]
