"""The three notebooks' work in one call: corpus audio -> MFCC file -> a trained run -> its t-SNE, then where
every output is. `timnet run` and the notebooks call `run_pipeline`; without a corpus, on generated example data."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .analysis.tsne import embeddings_of, write_tsne
from .core.config import Config
from .data.corpora import corpus_of
from .data.example import write_example_corpus
from .data.mfcc_extraction import PreprocessResult, preprocess
from .training.execution import Execution
from .training.run import RunResult, run_training
from .training.run_store import Roots


@dataclass
class PipelineResult:
    """What the pipeline produced, by stage."""

    features: PreprocessResult
    run: RunResult
    tsne_png: Path
    tsne_csv: Path
    utterances_embedded: int

    def outputs(self, roots: Roots) -> str:
        """Every output, one line a kind, as `timnet run` lists them."""
        run_id, csv = self.run.run_id, self.tsne_csv
        return (
            f"outputs of run {run_id}:\n"
            f"  features  {self.features.npy} (+ .csv manifest, .json settings)\n"
            f"  models    {roots.models / run_id}/ (fold_<k>.pt, config.json)\n"
            f"  curves    {roots.logs / run_id}/ (per-epoch CSV and PNG per unit), {self.run.curves_png}\n"
            f"  results   {self.run.workbook}, {roots.results / 'Accuracy Analysis Summary.xlsx'}\n"
            f"  confusion {self.run.confusion_png}\n"
            f"  t-SNE     {self.tsne_png}, {csv}, {csv.with_suffix('.json')}\n"
            f"next: timnet predict --run {run_id} <audio files>"
        )


def preprocess_lines(prep: PreprocessResult) -> list[str]:
    """What preprocessing found, as `timnet preprocess` and `timnet run` print it."""
    state = "up to date (nothing changed)" if prep.up_to_date else "written"
    return [f"{prep.npy}: {prep.count} utterances, {state}", *(f"  skipped {f}: {why}" for f, why in prep.skipped)]


def ensure_example(cfg: Config, data: Path) -> bool:
    """Write the synthetic example corpus to `data` when the EXAMPLE dataset is asked for and none is there."""
    if cfg.dataset.name != "EXAMPLE" or (data.is_dir() and any(data.iterdir())):
        return False
    write_example_corpus(data)
    return True


def run_pipeline(
    cfg: Config,
    data: Path | None = None,
    mfcc_dir: Path = Path("MFCC"),
    how: Execution | None = None,
    *,
    skip_bad: bool = False,
    overwrite: bool = False,
    trust_pickle: bool = False,
    say: Callable[[str], None] = print,
) -> PipelineResult:
    """preprocess -> train (as `how` says, under its roots) -> t-SNE of the held-out embeddings; `say` gets one line
    per stage."""
    how = how or Execution()
    roots, progress = how.roots, how.progress
    data = Path(data) if data is not None else Path("Datasets") / cfg.dataset.name
    if ensure_example(cfg, data):
        say(f"no corpus given: wrote the synthetic example corpus to {data} (for a real one: --dataset EMODB)")
    say("1/3 features")
    with warnings.catch_warnings():
        if caveat := corpus_of(cfg.dataset).caveat:  # the training stage says it, once, for the run
            warnings.filterwarnings("ignore", message=re.escape(caveat))
        prep = preprocess(
            cfg, data, mfcc_dir, workers=how.workers, skip_bad=skip_bad, overwrite=overwrite, progress=progress,
            trust_pickle=trust_pickle,
        )  # fmt: skip
    for line in preprocess_lines(prep):
        say(line)
    say("2/3 training")
    run = run_training(cfg, prep.npy, how)
    t = embeddings_of(run=run.run_id, models_root=roots.models, results_root=roots.results)
    png, csv = write_tsne(t.out_dir, t.config, t.features, t.embeddings, t.title, notes=t.notes)
    say(f"3/3 t-SNE of {len(t.features)} held-out utterances: {png}")
    return PipelineResult(prep, run, png, csv, len(t.features))
