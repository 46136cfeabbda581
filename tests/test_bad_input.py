"""Bad input, systematically (hypothesis): arbitrary bytes, sizes and values give a result or one TimnetError line,
never another exception — the audio reader, CSV lists of files, sweep grid files and `--set` overrides."""

from __future__ import annotations

import struct
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is installed by requirements.txt")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from timnet import load_config  # noqa: E402
from timnet.core.errors import TimnetError  # noqa: E402

FEW = settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def one_line_or_result(call):
    """Run `call`; a TimnetError must be one line; any other exception fails the property."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return call()
    except TimnetError as err:
        assert "\n" not in str(err) and str(err), repr(err)
        return None


def written(name: str, data: bytes) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="timnet_bad_"))
    path = folder / name
    path.write_bytes(data)
    return path


def wav_header(channels: int, rate: int, bits: int, fmt: int, data_size: int) -> bytes:
    """A RIFF/WAVE header with any field values, so the reader meets plausible-looking broken files too."""
    block = channels * max(bits, 1) // 8
    fmt_chunk = struct.pack("<HHIIHH", fmt, channels, rate, (rate * block) & 0xFFFFFFFF, block & 0xFFFF, bits)
    riff = struct.pack("<I", (36 + data_size) & 0xFFFFFFFF)
    return b"RIFF" + riff + b"WAVEfmt " + struct.pack("<I", 16) + fmt_chunk + b"data"


@FEW
@given(data=st.binary(max_size=3000))
def test_the_audio_reader_on_arbitrary_bytes(data):
    from timnet.data.mfcc_extraction import load_signal

    settings_ = load_config("EMODB").features
    y = one_line_or_result(lambda: load_signal(written("x.wav", data), settings_))
    assert y is None or (isinstance(y, np.ndarray) and np.all(np.isfinite(y)))


@FEW
@given(
    channels=st.integers(0, 9),
    rate=st.sampled_from([0, 1, 8000, 16000, 44100, 2**31 - 1]),
    bits=st.sampled_from([0, 7, 8, 16, 24, 32, 64]),
    fmt=st.sampled_from([0, 1, 3, 6, 7, 0xFFFE, 0x1234]),
    size=st.integers(0, 2**32 - 1),
    body=st.binary(max_size=4000),
)
def test_the_audio_reader_on_wav_headers_with_any_fields(channels, rate, bits, fmt, size, body):
    from timnet.data.mfcc_extraction import load_signal

    data = wav_header(channels, rate, bits, fmt, size) + struct.pack("<I", size) + body
    one_line_or_result(lambda: load_signal(written("x.wav", data), load_config("EMODB").features))


def test_a_header_claiming_a_few_hertz_is_refused_before_resampling(tmp_path):
    """A 4-second body at "1 Hz" would be resampled to ~64 M samples per second of body (out of memory on a large
    file); it is refused from the header."""
    from timnet.core.errors import BadAudioError
    from timnet.data.mfcc_extraction import load_signal

    data = wav_header(1, 1, 16, 1, 8000) + struct.pack("<I", 8000) + bytes(range(256)) * 31 + bytes(64)
    path = tmp_path / "one_hertz.wav"
    path.write_bytes(data)
    with pytest.raises(BadAudioError, match=r"one_hertz\.wav: claims a sample rate of 1 Hz .*a broken header — "):
        load_signal(path, load_config("EMODB").features)


CSV_PIECES = ["path", "file", ",", "\n", '"', "a.wav", "/abs/b.wav", "x,y", "\x00", "é", ";", "\r\n", " ", "1"]


@FEW
@given(data=st.one_of(st.binary(max_size=500), st.lists(st.sampled_from(CSV_PIECES), max_size=30).map("".join)))
def test_a_csv_list_of_files_with_any_content(data):
    from timnet.serving.predict import collect_audio

    raw = data if isinstance(data, bytes) else data.encode("utf-8")
    files = one_line_or_result(lambda: collect_audio([written("list.csv", raw)]))
    assert files is None or (files and all(isinstance(f, Path) for f in files))


GRID_PIECES = [
    "[runs]",
    "[grid]",
    "[other]",
    'dataset = "EMODB"',
    "dataset = 3",
    'name = "n"',
    "name = [1]",
    "runs = 1",
    "grid = 2",
    "set = 5",
    'set = { "train.epochs" = 2 }',
    'set = { "nodot" = 1 }',
    'mfcc = "x.npy"',
    "protocol = []",
    'protocol = ["random", "speaker"]',
    "seed = [1, 2]",
    'seed = "1"',
    '"train.lr" = [0.1]',
    "learning_rate = [1]",
    "x = { a = 1 }",
    "=",
    "[",
    '"',
]


@FEW
@given(
    data=st.one_of(
        st.binary(max_size=400), st.lists(st.sampled_from(GRID_PIECES), max_size=12).map("\n".join).map(str.encode)
    )
)
def test_a_sweep_grid_file_with_any_content(data):
    from timnet.studies.sweep import expand, load_grid

    grid = one_line_or_result(lambda: load_grid(written("grid.toml", data)))
    if grid is not None:
        assert isinstance(grid["grid"], dict) and all(isinstance(v, list) and v for v in grid["grid"].values())
        assert isinstance(expand(grid), list)


SETTINGS = [
    "train.epochs",
    "train.lr",
    "train.seeds",
    "train.protocol",
    "train.patience",
    "train.val_fraction",
    "features.n_mfcc",
    "features.sample_rate",
    "features.signal_length",
    "features.center",
    "features.res_type",
    "model.filters",
    "model.dropout",
    "model.n_classes",
    "dataset.classes",
    "dataset.name",
    "train",
    "nosuch.key",
    "",
]
VALUES = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["0", "-1", "1e309", "nan", "inf", "-inf", "1.5", "true", "2,3", ",", "99999999999999999999"]),
)


@FEW
@given(key=st.one_of(st.sampled_from(SETTINGS), st.text(max_size=15)), value=VALUES)
def test_set_overrides_with_any_key_and_value(key, value):
    def build():
        cfg = load_config("EMODB", {key.strip(): value.strip()})
        cfg.train.validate()  # what a run checks before it starts
        return cfg

    one_line_or_result(build)
