"""`timnet devices` and `--device auto`: each way to train timed on this machine, the fastest chosen, cached."""

from __future__ import annotations

import json
import re

import pytest
from conftest import SHORT, train

from timnet import load_config
from timnet.cli import main
from timnet.core.devices import available_cores
from timnet.core.errors import TimnetError
from timnet.training.device_timing import PAPER, Option, accelerators, auto_device, fastest, shape_key, steps_per_epoch

ROW = re.compile(  # a timed row: name, unit-steps/s, s/unit-epoch, paper hours, the auto mark
    r"^(?P<name>.+?)\s{2,}(?P<rate>[\d.]+)\s+(?P<epoch>[\d.]+)\s+(?P<hours>[\d.]+) h(?P<auto>  <- --device auto)?$"
)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TIMNET_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "devices.json"


@pytest.mark.slow
def test_timnet_devices_times_each_way_to_train_and_caches_it(cache, capsys):
    """CPU workers (real worker processes) and the CPU packed, each timed: positive rates, seconds per
    unit-epoch = steps / rate, the paper protocol = 10 x 500 of those; the fastest a run would use is marked."""
    argv = ["devices", "--dataset", "EMODB", "--set", "features.signal_length=16000", "--seconds", "0.5"]
    assert main([*argv, "--samples", "84"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {m["name"]: m for m in map(ROW.match, lines[1:]) if m}
    cfg = load_config("EMODB", SHORT)
    steps = steps_per_epoch(cfg, 84)
    assert steps == 2 and lines[-1].startswith("EMODB: 84 utterances of 32 x 39, 2 steps per unit-epoch")
    workers = min(available_cores(), cfg.train.folds)
    names = [
        f"cpu, {workers} worker process(es) x {max(1, available_cores() // workers)} thread(s)",
        "cpu, 2 units packed",
    ]
    assert names == list(rows)[:2] and len(rows) == 2 + 2 * len(accelerators())
    for row in rows.values():
        rate, epoch, hours = float(row["rate"]), float(row["epoch"]), float(row["hours"])
        # printed rounded (rate to 0.1, seconds to 0.001, hours to 0.01): each checked within its rounding
        assert rate > 0 and steps / (rate + 0.05) - 0.0005 <= epoch <= steps / max(rate - 0.05, 1e-9) + 0.0005
        assert hours == pytest.approx(PAPER["folds"] * PAPER["epochs"] * epoch / 3600, abs=0.005 + 5000 * 0.0005 / 3600)
    marked = [name for name, row in rows.items() if row["auto"]]
    assert len(marked) == 1 and (accelerators() or marked == [names[0]])
    saved = json.loads(cache.read_text())
    (key,) = saved
    assert key == shape_key(cfg) and "32x39 L8 F39 k2 C7 B64" in key
    assert [o["unit_steps_per_second"] > 0 for o in saved[key]["options"]] == [True] * len(rows)


def test_timnet_devices_refuses_what_it_cannot_time(cache, capsys):
    assert main(["devices", "--dataset", "EMODB", "--samples", "3"]) == 2
    assert "--samples: must be ≥ 10 (got 3)" in capsys.readouterr().err
    assert main(["devices", "--dataset", "EXAMPLE"]) == 2
    assert "--samples: EXAMPLE has no expected utterance count" in capsys.readouterr().err
    assert not cache.exists()


def test_auto_is_the_fastest_way_a_run_trains_never_a_slower_accelerator():
    cpu = Option("cpu", 1, 2, 1, 30.0)
    slow_gpu, fast_gpu = Option("mps", 10, 1, None, 12.0), Option("cuda:0", 10, 1, None, 400.0)
    cpu_packed, gpu_alone = Option("cpu", 2, 1, None, 90.0), Option("cuda:0", 1, 1, None, 900.0)
    assert fastest([cpu, slow_gpu, cpu_packed]) is cpu  # the CPU packed is not what a CPU run trains
    assert fastest([cpu, slow_gpu, fast_gpu, gpu_alone]) is fast_gpu  # nor one unit at a time on a GPU
    assert fastest([cpu, Option("cuda:0", 10, 1, None, 0.0, "OutOfMemoryError: CUDA out of memory")]) is cpu
    two = fastest([cpu, Option("cuda:0", 10, 1, None, 20.0), Option("cuda:1", 10, 1, None, 20.0)])
    assert (two.device, two.workers, two.unit_steps_per_second) == ("cuda", 2, 40.0)  # two GPUs train together


def test_auto_trains_on_the_cpu_without_timing_where_there_is_no_accelerator(cache):
    if accelerators():
        pytest.skip(f"this machine has {accelerators()}: auto times them (test_timnet_devices_...)")
    assert auto_device(load_config("EMODB")) == "cpu" and not cache.exists()


def test_capture_on_without_cuda_is_one_line_before_anything_is_written(tmp_path, mfcc):
    if any(d.startswith("cuda") for d in accelerators()):
        pytest.skip("this machine has CUDA: capture runs (tests/test_device.py)")
    with pytest.raises(TimnetError, match=r"^train\.capture: CUDA graphs need a CUDA device \(got --device cpu\)"):
        train(tmp_path, mfcc, capture="on")
    assert not (tmp_path / "Models").exists() or not any((tmp_path / "Models").iterdir())


def test_the_devices_cache_keeps_what_another_process_wrote_meanwhile_and_knows_the_blas(cache, monkeypatch):
    """Timing takes seconds: an entry another process wrote meanwhile stays in the cache file. The key holds the
    CPU's BLAS (numpy's trains through the fused blocks, at another speed than torch's)."""
    from timnet.core.atomic import write_json
    from timnet.training import device_timing

    cfg = load_config("EMODB", {**SHORT, "train.blas": "numpy"})

    def timed_while_another_process_writes(cfg, seconds):
        write_json(cache, {"another shape": {"measured": "then", "options": []}})
        return [Option("cpu", 1, 2, 1, 5.0)]

    monkeypatch.setattr(device_timing, "measure", timed_while_another_process_writes)
    measured, from_cache = device_timing.cached_or_measured(cfg)
    assert not from_cache and measured[0].unit_steps_per_second == 5.0
    saved = json.loads(cache.read_text())
    assert set(saved) == {"another shape", shape_key(cfg)} and saved[shape_key(cfg)]["options"][0]["workers"] == 2
    assert device_timing.cached_or_measured(cfg) == (measured, True)
    other = load_config("EMODB", {**SHORT, "train.blas": "torch"})
    assert "numpy BLAS" in shape_key(cfg) and "torch BLAS" in shape_key(other)
