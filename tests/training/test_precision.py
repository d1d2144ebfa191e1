"""precision: auto: the step timed in both precisions, the choice recorded once per study and
used by every worker."""

from __future__ import annotations

import dataclasses
import json
import threading

import pytest
import torch
from mlflow import MlflowClient

from harness.api import search as run_search
from harness.config import load_spec
from harness.config.hparams import HParams
from harness.errors import BudgetConflict, SpecError
from harness.search import records
from harness.search.create import prepare_study
from harness.search.liveness import load_study
from harness.search.worker import work
from harness.training import precision
from harness.util import paths

from ..conftest import tiny_study


def test_bf16_is_chosen_only_when_clearly_faster():
    def choice(fp32: float, bf16: float) -> str:
        return precision.Timing({"fp32": fp32, "bf16": bf16}, 1, "cpu").choice

    assert choice(10.0, 5.0) == "bf16"
    assert choice(10.0, 10.0 / precision.BF16_MARGIN) == "bf16"  # at the margin
    assert choice(10.0, 9.5) == "fp32"  # faster, but not by enough to pay for the rounding
    assert choice(10.0, 20.0) == "fp32"


def test_measure_times_both_precisions_and_leaves_training_unaffected():
    """It reports a time per step for fp32 and bf16, and puts back the threads and the random
    state it used (a run seeded before it draws what it would have drawn)."""
    hp = HParams(context_length=3, embedding_dim=8, hidden_width=32, batch_size=16,
                 optimizer="adamw", lr=1e-3, dropout=0.1)
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    timing = precision.measure(hp, 27, threads=1)
    assert torch.equal(torch.rand(4), expected)
    assert torch.get_num_threads() == threads
    assert timing.threads == 1 and timing.device == "cpu"
    assert set(timing.ms) == {"fp32", "bf16"} and all(ms > 0 for ms in timing.ms.values())
    assert timing.choice in ("fp32", "bf16")


@pytest.mark.parametrize(("bf16_ms", "timed"), [(30.0, precision.MIN_TIMED_STEPS),
                                                (1.5, precision.TIMED_STEPS)])
def test_timing_stops_early_only_once_the_choice_is_clear(monkeypatch, bf16_ms, timed):
    """bf16 30x slower (emulated, as on a Zen 3): the minimum of timed steps; 1.5x slower
    (near the margin): all of them."""
    calls: list[int] = []

    def fake(step, xb, yb, dev):  # the steps alternate fp32, bf16 (PRECISIONS' order)
        calls.append(1)
        return 1e-3 if len(calls) % 2 else bf16_ms * 1e-3

    monkeypatch.setattr(precision, "_time_step", fake)
    hp = HParams(context_length=3, embedding_dim=8, hidden_width=32, batch_size=16)
    timing = precision.measure(hp, 27, threads=1)
    assert timing.ms == {"fp32": 1.0, "bf16": bf16_ms} and timing.choice == "fp32"
    assert len(calls) == 2 * timed


def test_auto_is_a_fixed_value_only(write_study):
    spec = load_spec(write_study(tiny_study(fixed={"precision": "auto"})))
    assert spec.auto_precision
    with pytest.raises(ValueError, match="precision auto is measured before training"):
        spec.base_hparams(lr=1e-3)
    assert spec.with_precision("bf16").base_hparams(lr=1e-3).precision == "bf16"
    with pytest.raises(SpecError, match="search.precision"):
        load_spec(write_study(tiny_study(search={"precision": ["auto", "fp32"]})))


def _timing(fp32: float, bf16: float):
    def fake(hp, vocab_size, *, device="cpu", threads=None):
        assert hp.hidden_width == 64 and hp.batch_size == 32  # the largest model is timed
        return precision.Timing({"fp32": fp32, "bf16": bf16}, threads or 1, device)
    return fake


@pytest.mark.slow
def test_the_study_measures_once_and_every_worker_trains_in_its_choice(write_study,
                                                                       monkeypatch):
    """The coordinator measures (here: bf16 2x faster), records the choice, and both spawned
    workers, which never measure, train every trial in it; a resumed study keeps its choice
    even where a new measurement would say otherwise."""
    spec = load_spec(write_study(tiny_study(
        budget={"n_trials": 4, "steps": 100, "eval_every": 50},
        fixed={"context_length": 3, "embedding_dim": 8, "optimizer": "adamw",
               "lr_schedule": "constant", "precision": "auto"},
        search={"lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True},
                "hidden_width": [16, 64], "batch_size": [16, 32]})))
    monkeypatch.setattr(precision, "measure", _timing(fp32=2.0, bf16=1.0))
    study = run_search(spec, workers=2)
    record = records.read_record(study)
    assert (record.precision, record.precision_ms) == ("bf16", {"fp32": 2.0, "bf16": 1.0})
    tags = MlflowClient(paths.tracking_uri()).get_run(record.parent_run_id).data.tags
    assert (tags["harness.precision"], tags["harness.precision_ms.fp32"],
            tags["harness.precision_ms.bf16"]) == ("bf16", "2.00", "1.00")
    recs = records.search_records(study)
    assert len({r.pid for r in recs}) == 2
    assert [r.hparams["precision"] for r in recs] == ["bf16"] * 4

    monkeypatch.setattr(precision, "measure", _timing(fp32=1.0, bf16=2.0))
    resumed = load_spec(spec.source, ["budget.n_trials=5"])
    study = run_search(resumed, workers=1)
    assert records.read_record(study).precision == "bf16"
    assert [r.hparams["precision"] for r in records.search_records(study)] == ["bf16"] * 5


def test_a_worker_with_auto_cannot_join_a_study_that_named_its_precision(write_study):
    path = write_study(tiny_study())
    prepare_study(load_spec(path))
    with pytest.raises(BudgetConflict, match="fixed.precision is auto"):
        work(load_spec(path, ["fixed.precision=auto"]))
    assert records.records(load_study(load_spec(path))) == []  # it ran nothing


def test_two_resumes_switching_a_study_to_auto_at_once_agree_on_one_precision(write_study,
                                                                              monkeypatch):
    """Both read the record before either writes, and their measurements disagree (one says
    bf16, the other fp32): both record the same choice, so every worker trains in one."""
    path = write_study(tiny_study())
    prepare_study(load_spec(path))  # a precision named (fp32): none measured
    both_measuring = threading.Barrier(2)
    answers = iter([(2.0, 1.0), (1.0, 2.0)])
    lock = threading.Lock()

    def fake(hp, vocab_size, *, device="cpu", threads=None):
        with lock:
            fp32, bf16 = next(answers)
        both_measuring.wait(timeout=30)
        return precision.Timing({"fp32": fp32, "bf16": bf16}, 1, device)

    monkeypatch.setattr(precision, "measure", fake)
    resumed = []

    def resume() -> None:
        resumed.append(prepare_study(load_spec(path, ["fixed.precision=auto"]))[1])

    threads = [threading.Thread(target=resume) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(resumed) == 2
    assert resumed[0].precision == resumed[1].precision
    assert resumed[0].precision_ms == resumed[1].precision_ms
    assert records.read_record(load_study(load_spec(path))).precision == resumed[0].precision


@pytest.mark.slow
def test_harness_train_says_what_auto_chose(write_study, monkeypatch, capsys):
    from harness.cli import main

    monkeypatch.setattr(precision, "measure", _timing(fp32=3.0, bf16=1.5))
    path = write_study(tiny_study(fixed={"context_length": 3, "embedding_dim": 8,
                                         "hidden_width": 64, "batch_size": 32,
                                         "precision": "auto"},
                                  search={"lr": {"type": "float", "low": 1.0e-3,
                                                 "high": 1.0e-2}}))
    assert main(["train", str(path), "--set", "budget.steps=50", "--json"]) == 0
    out, err = capsys.readouterr()
    assert "precision auto: bf16 (a step of this config: fp32 3.0 ms, bf16 1.5 ms)" in err
    assert json.loads(out)["config"]["precision"] == "bf16"


def test_the_progress_display_says_what_auto_chose():
    import io

    from harness.cli.progress import Progress
    from harness.search.records import StudyRecord

    out = io.StringIO()
    record = StudyRecord("id", "run", 200, None, timeout_start=0.0, created=0.0)
    Progress(out).search_started(record)  # a precision named in the file: nothing to say
    assert out.getvalue() == ""
    Progress(out).search_started(dataclasses.replace(
        record, precision="fp32", precision_ms={"fp32": 17.23, "bf16": 31.06}))
    assert out.getvalue() == ("precision auto: fp32 for every trial (a step of the largest "
                              "model the study samples: fp32 17.2 ms, bf16 31.1 ms)\n")
