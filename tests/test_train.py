"""Pre-training end to end on the demo world: it learns, it resumes exactly, it refuses
bad input before spending compute."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from contriever_repro.data.beir import load_beir_folder
from contriever_repro.data.demo_world import generate_demo_datasets, generate_pretraining_corpus
from contriever_repro.errors import InputError
from contriever_repro.evaluation.quick_eval import dense_scores
from contriever_repro.models.spec import ModelSpec
from contriever_repro.models.tiny_bert import build_tiny_bert
from contriever_repro.training.config import PretrainConfig
from contriever_repro.training.loop import (
    PREEMPTED_EXIT_CODE,
    load_tokenizer,
    pretrain,
    read_metrics,
)
from contriever_repro.training.runfolder import NotRetried, RunFolderBusy
from contriever_repro.training.shards import tokenize_text_file
from tiny_models import record_packed_forwards

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "pretrain.py"

# Demo hyper-parameters: a 2-layer, 64-dim BERT learns in a few hundred CPU steps with a
# larger learning rate and temperature than BERT-base (its unnormalised embeddings have
# a different scale); everything else is the Contriever recipe.
DEMO = {
    "tokenizer": "tiny",
    "device": "cpu",
    "sources": ["demo"],
    "chunk_length": 128,
    "queue_size": 1024,
    "momentum": 0.99,
    "temperature": 0.1,
    "lr": 5e-4,
    "warmup_steps": 10,
    "batch_size_per_device": 64,
    "nodes": 1,
    "gpus_per_node": 1,
    "num_workers": 0,
    "log_every": 10,
    "checkpoint_every": 1000,
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain_world")
    text = generate_pretraining_corpus(root / "text.txt", 3000, seed=0)
    model = root / "tiny"
    build_tiny_bert(
        text.read_text(encoding="utf-8").splitlines(),
        model,
        vocab_size=4000,
        hidden_size=64,
        num_layers=2,
        num_heads=2,
        intermediate_size=128,
        seed=0,
    )
    shards = root / "shards" / "demo"
    shards.mkdir(parents=True)
    tokenize_text_file(text, load_tokenizer(model), shards / "part-000")
    generate_demo_datasets(
        root / "beir",
        {
            "demo-scifact": {"n_docs": 600, "splits": {"test": 100}, "graded": True},
            "demo-quora": {
                "kind": "self_query",
                "n_docs": 800,
                "splits": {"test": 100},
                "doc_style": "question",
                "titles": False,
            },
        },
        seed=0,
    )
    return {"root": root, "text": text, "model": model, "shards": shards}


def config(name="demo", **overrides) -> PretrainConfig:
    return PretrainConfig.from_dict(name, {**DEMO, **overrides})


def ndcg(model_dir: Path, beir_root: Path, dataset: str) -> float:
    spec = ModelSpec(name="m", source=str(model_dir), max_query_length=128, max_passage_length=256)
    return dense_scores(spec, *load_beir_folder(beir_root / dataset, "test"))["NDCG@10"]


# --------------------------------------------------------------------------- learning


@pytest.mark.parametrize(
    ("objective", "unpadded"), [("moco", False), ("inbatch", False), ("moco", True)]
)
def test_pretraining_beats_random_init_on_demo_world(
    world, tmp_path, monkeypatch, objective, unpadded
):
    torch.set_num_threads(2)
    packed = record_packed_forwards(monkeypatch)
    out = tmp_path / "model"
    # In-batch negatives need a softer temperature than MoCo to learn in 150 steps here.
    temperature = 0.5 if objective == "inbatch" else 0.1
    cfg = config(objective=objective, steps=150, temperature=temperature, unpadded=unpadded)
    summary = pretrain(cfg, world["model"], {"demo": world["shards"]}, tmp_path / "run", out)
    assert summary["step"] == 150
    assert len(packed) == (2 * 150 if unpadded else 0)  # query and key encoder, each step

    curve = read_metrics(tmp_path / "run")
    assert [r["step"] for r in curve] == list(range(10, 151, 10))
    assert curve[-1]["stdq"] > 0.01  # no collapse
    for dataset in ("demo-scifact", "demo-quora"):
        before = ndcg(world["model"], world["root"] / "beir", dataset)
        after = ndcg(out, world["root"] / "beir", dataset)
        assert after > before + 0.10, (objective, dataset, before, after)


# --------------------------------------------------------------------------- resume


def _cli(world, run_dir, export, steps=12, workers=0, extra=()):
    spec = {**DEMO, "steps": steps, "batch_size_per_device": 16, "num_workers": workers}
    spec.update(log_every=1, checkpoint_every=4, warmup_steps=2)
    cmd = [sys.executable, str(SCRIPT), "--name", "resume", "--experiment", json.dumps(spec)]
    cmd += ["--init", str(world["model"]), "--source", f"demo={world['shards']}"]
    cmd += ["--run-dir", str(run_dir), "--export", str(export), "--threads", "1", *extra]
    return cmd


def _run(cmd):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "lib")}
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def _start(cmd):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "lib")}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def _wait_for_steps(run_dir: Path, proc, n: int, timeout: float = 120) -> None:
    start = time.time()
    while len(read_metrics(run_dir)) < n:
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        assert time.time() - start < timeout
        time.sleep(0.02)


CURVE_KEYS = ("step", "loss", "accuracy", "stdq", "stdk", "lr")


def _curve(run_dir):
    return [{k: r[k] for k in CURVE_KEYS} for r in read_metrics(run_dir)]


@pytest.fixture(scope="module")
def uninterrupted(world, tmp_path_factory):
    base = tmp_path_factory.mktemp("uninterrupted")
    done = _run(_cli(world, base / "run", base / "model"))
    assert done.returncode == 0, done.stderr[-3000:]
    return {"curve": _curve(base / "run"), "weights": load_file(base / "model/model.safetensors")}


def _assert_same_run(reference, run_dir, model_dir):
    assert _curve(run_dir) == reference["curve"]
    weights = load_file(model_dir / "model.safetensors")
    assert weights.keys() == reference["weights"].keys()
    for key, value in weights.items():
        assert torch.equal(value, reference["weights"][key]), key


def test_killed_run_resumes_to_the_same_weights_and_loss_curve(world, tmp_path, uninterrupted):
    run_dir, model = tmp_path / "run", tmp_path / "model"
    kill_after = random.Random().randint(5, 10)  # any step must work
    proc = _start(_cli(world, run_dir, model))
    _wait_for_steps(run_dir, proc, kill_after)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not model.exists()
    killed_at = len(read_metrics(run_dir))
    assert killed_at < 12, "the run finished before it was killed"

    # Resume with DataLoader workers this time: the data stream must not depend on them.
    resumed = _run(_cli(world, run_dir, model, workers=2, extra=["--resume", "require"]))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    _assert_same_run(uninterrupted, run_dir, model)


def test_sigterm_checkpoints_then_exits_75_and_the_rerun_continues(world, tmp_path, uninterrupted):
    run_dir, model = tmp_path / "run", tmp_path / "model"
    proc = _start(_cli(world, run_dir, model, extra=["--attempt", "1"]))
    _wait_for_steps(run_dir, proc, 3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == PREEMPTED_EXIT_CODE, err.decode()[-3000:]
    stopped_at = read_metrics(run_dir)[-1]["step"]
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    assert latest == f"step-{stopped_at:08d}"  # saved at the step it stopped, nothing lost
    assert not model.exists()

    resumed = _run(_cli(world, run_dir, model, extra=["--attempt", "2"]))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_run(uninterrupted, run_dir, model)

    # Both attempts' logs are kept in the run folder (Snakemake deletes the rule's log
    # file before each attempt), the interrupted one with how it ended.
    text = (run_dir / "logs" / "train.log").read_text()
    first, second = text.split("==== ")[1:]
    assert " attempt 1: pid " in first and " attempt 2: pid " in second
    assert f"stopped at step {stopped_at} (signal SIGTERM)" in first
    assert "checkpoint saved" in first and "step 1/12" in first
    assert f"resumed from {run_dir / 'checkpoints' / latest}" in second
    assert "exported the query encoder" in second


def test_time_limit_stops_with_a_checkpoint(world, tmp_path):
    cmd = _cli(world, tmp_path / "run", tmp_path / "model", steps=200)
    cmd += ["--time-limit-min", "0.001", "--stop-margin-min", "0"]
    result = _run(cmd)
    assert result.returncode == PREEMPTED_EXIT_CODE, result.stderr[-3000:]
    assert "time limit reached" in result.stderr
    assert (tmp_path / "run" / "checkpoints" / "latest").exists()


# --------------------------------------------------------------------------- CPU numerics

FTZ_PROBE = """
import sys, torch
from contriever_repro.training.config import PretrainConfig
from contriever_repro.training.loop import flush_denormals
on = flush_denormals(PretrainConfig.from_dict("x", {"flush_denormal": sys.argv[1] == "on"}))
torch.set_num_threads(2)
x = torch.full((2000, 2000), 1e-39)  # subnormal in fp32
print(int(on), int((x * 0.5 != 0).sum()))  # a parallel op: every pool thread does a part
"""


@pytest.mark.parametrize(("mode", "nonzero"), [("on", 0), ("off", 2000 * 2000)])
def test_flush_denormals_reaches_every_intra_op_thread(mode, nonzero):
    """Set at process start (as scripts/pretrain.py does), flush-to-zero holds in all
    torch threads, not only the caller's: subnormal products are 0 everywhere."""
    out = _run([sys.executable, "-c", FTZ_PROBE, mode])
    assert out.returncode == 0, out.stderr[-2000:]
    supported, count = map(int, out.stdout.split()[-2:])
    if mode == "on" and not supported:
        pytest.skip("this CPU has no flush-to-zero mode torch can set")
    assert count == nonzero


def test_denormal_mode_is_not_part_of_the_run_identity():
    """A run may resume on other hardware or with the other CPU mode."""
    assert "flush_denormal" not in config().training_dict()
    assert config().flush_denormal is True


def _without_dropout(model: Path, dest: Path) -> Path:
    """A copy of `model` with dropout off, for runs compared step by step."""
    shutil.copytree(model, dest)
    config_json = json.loads((dest / "config.json").read_text())
    config_json.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (dest / "config.json").write_text(json.dumps(config_json))
    return dest


def test_padding_to_a_multiple_changes_the_loss_curve_only_by_rounding(world, tmp_path):
    """GPU runs pad views to multiples of 8 (repeating shapes, full tensor-core tiles);
    padded positions are masked out of attention and pooling, so without dropout the run
    is the same up to rounding."""
    torch.set_num_threads(2)
    # Without dropout: its random masks are drawn per padded shape, so they differ.
    model = _without_dropout(world["model"], tmp_path / "no-dropout")
    curves = {}
    for multiple in (1, 8):
        cfg = config(
            steps=6, warmup_steps=2, batch_size_per_device=16, log_every=1, pad_multiple=multiple
        )
        run = tmp_path / f"run{multiple}"
        pretrain(cfg, model, {"demo": world["shards"]}, run, None)
        curves[multiple] = [r["loss"] for r in read_metrics(run)]
    assert len(curves[1]) == 6
    assert curves[8] == pytest.approx(curves[1], rel=1e-4)
    assert "pad_multiple" not in config().training_dict()  # a run may resume with another


def test_unpadded_encoders_change_the_loss_curve_only_by_rounding(world, tmp_path, monkeypatch):
    """unpadded: the encoders compute on the views' real tokens only (models/packing.py);
    without dropout the run is the padded one up to rounding, and it exports the same
    parameters."""
    torch.set_num_threads(2)
    model = _without_dropout(world["model"], tmp_path / "no-dropout")
    packed = record_packed_forwards(monkeypatch)
    curves, forwards = {}, {}
    for unpadded in (False, True):
        cfg = config(steps=6, warmup_steps=2, batch_size_per_device=16, log_every=1,
                     unpadded=unpadded)  # fmt: skip
        run, out = tmp_path / f"run-{unpadded}", tmp_path / f"model-{unpadded}"
        pretrain(cfg, model, {"demo": world["shards"]}, run, out)
        curves[unpadded] = [r["loss"] for r in read_metrics(run)]
        forwards[unpadded], packed[:] = len(packed), []
    assert forwards == {False: 0, True: 2 * 6}  # query and key encoder, each step
    assert len(curves[True]) == 6
    assert curves[True] == pytest.approx(curves[False], rel=1e-4)
    exported = {u: load_file(tmp_path / f"model-{u}" / "model.safetensors") for u in curves}
    assert exported[True].keys() == exported[False].keys()
    for name, weights in exported[False].items():
        torch.testing.assert_close(exported[True][name], weights, rtol=1e-4, atol=1e-4)
    assert "unpadded" not in config().training_dict()  # a run may resume with another
    with pytest.raises(InputError, match=r"demo\.unpadded: packs a new number of tokens"):
        config(unpadded=True, compile="inductor")


def test_compiled_encoders_train_as_eager_ones(world, tmp_path, caplog):
    """compile: the encoders' forward goes through torch.compile (dynamo traces it; the
    "eager" backend runs the captured graphs without generating code, which keeps this
    test fast on a CPU), and checkpoints and export keep their parameter names."""
    torch.set_num_threads(2)
    model = _without_dropout(world["model"], tmp_path / "no-dropout")
    from torch._dynamo.utils import counters

    caplog.set_level("INFO", logger="contriever_repro")
    counters.clear()
    curves = {}
    for backend in (None, "eager"):
        cfg = config(
            steps=4, warmup_steps=1, batch_size_per_device=16, log_every=1,
            chunk_length=64, pad_multiple=32, compile=backend,
        )  # fmt: skip
        run, out = tmp_path / f"run-{backend}", tmp_path / f"model-{backend}"
        pretrain(cfg, model, {"demo": world["shards"]}, run, out)
        curves[backend] = [r["loss"] for r in read_metrics(run)]
    assert curves["eager"] == pytest.approx(curves[None], rel=1e-4)
    assert "compiled 2 encoder(s)" in caplog.text  # MoCo's query and key encoders
    assert counters["stats"]["unique_graphs"] >= 2  # dynamo did capture them
    assert load_file(tmp_path / "model-eager" / "model.safetensors").keys() == (
        load_file(tmp_path / "model-None" / "model.safetensors").keys()
    )
    with pytest.raises(InputError, match="demo.compile: unknown torch.compile backend"):
        pretrain(config(steps=2, warmup_steps=1, compile="fast"), model,
                 {"demo": world["shards"]}, tmp_path / "bad")  # fmt: skip


def test_compile_mode_reaches_torch_compile_and_marks_every_pass(world, tmp_path, monkeypatch):
    """compile_mode: reduce-overhead is passed to torch.compile for each encoder, and
    every forward of a step starts a new CUDA-graph step, so a replay may reuse the
    memory of the last pass's outputs. torch.compile is recorded here, not run: CUDA
    graphs need a GPU (tests/test_gpu.py trains with them there)."""
    compiled, marks = [], []
    monkeypatch.setattr(
        torch.nn.Module, "compile", lambda self, **kw: compiled.append((type(self), kw))
    )
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    cfg = config(
        steps=3, warmup_steps=1, batch_size_per_device=4, grad_accumulation=2,
        compile="inductor", compile_mode="reduce-overhead",
    )  # fmt: skip
    assert cfg.cudagraphs and "compile_mode" not in cfg.training_dict()
    pretrain(cfg, world["model"], {"demo": world["shards"]}, tmp_path / "run", None)
    assert [kw for _, kw in compiled] == [
        {"backend": "inductor", "mode": "reduce-overhead", "dynamic": False}
    ] * 2  # MoCo's query and key encoders
    assert len(marks) == 3 * 2  # steps x micro-batches


def test_key_encoder_half_weights_is_a_bookkeeping_switch(world):
    from transformers import AutoModel

    from contriever_repro.training.loop import build_objective

    model = AutoModel.from_pretrained(world["model"])
    assert build_objective(config(), model).key_half_weights is not None
    off = config(key_encoder_half_weights=False)
    assert build_objective(off, model).key_half_weights is None
    assert off.training_dict() == config().training_dict()  # a run may resume with either


def test_compile_mode_is_checked_against_inductor():
    from torch._inductor import list_mode_options

    from contriever_repro.training.config import COMPILE_MODES, CUDAGRAPH_MODES

    assert set(COMPILE_MODES) <= set(list_mode_options())
    assert all(list_mode_options(m).get("triton.cudagraphs") for m in CUDAGRAPH_MODES)
    assert not config(compile="inductor", compile_mode="max-autotune-no-cudagraphs").cudagraphs
    with pytest.raises(InputError, match=r"demo\.compile_mode: must be one of"):
        config(compile="inductor", compile_mode="turbo")
    with pytest.raises(InputError, match=r"demo\.compile_mode: .*needs compile: inductor"):
        config(compile="eager", compile_mode="reduce-overhead")


def test_views_are_padded_to_multiples_of_8_within_the_chunk(world):
    from contriever_repro.training.loop import (
        build_batches,
        build_sampler,
        build_views,
        open_sources,
    )

    cfg = config(chunk_length=60, ratio_min=0.5, ratio_max=1.0, batch_size_per_device=16)
    assert cfg.pad_multiple == 8
    tokenizer = load_tokenizer(world["model"])
    sources = open_sources(cfg, {"demo": world["shards"]}, tokenizer, 0, 1)
    # the run's own stream: chunk + [CLS] + [SEP] = 62 tokens at most
    batches = build_batches(
        cfg, build_sampler(cfg, sources), build_views(cfg, tokenizer), tokenizer
    )
    widths = set()
    for b in range(20):
        batch = batches.batch(b)
        for side in ("q", "k"):
            width = batch[f"{side}_input_ids"].shape[1]
            longest = int(batch[f"{side}_attention_mask"].sum(dim=1).max())
            assert width % 8 == 0 or width == 62
            assert longest <= width < longest + 8
            widths.add(width)
    assert 62 in widths  # a whole chunk is not rounded past the longest view


# --------------------------------------------------------------------------- bad input


def test_unknown_key_and_bad_values_name_the_key():
    with pytest.raises(InputError, match=r"pretraining\.x: unknown key\(s\) \['moco_queue'\]"):
        PretrainConfig.from_dict("x", {"moco_queue": 131072})
    with pytest.raises(InputError, match=r"pretraining\.x\.objective"):
        PretrainConfig.from_dict("x", {"objective": "simclr"})
    with pytest.raises(InputError, match=r"pretraining\.x\.steps: expected int"):
        PretrainConfig.from_dict("x", {"steps": "500k"})
    with pytest.raises(InputError, match=r"pretraining\.x\.warmup_steps"):
        PretrainConfig.from_dict("x", {"steps": 10, "warmup_steps": 10})


def test_paper_defaults_are_the_contriever_run():
    cfg = PretrainConfig.from_dict("contriever", {})
    assert cfg.global_batch() == 2048
    assert (cfg.queue_size, cfg.momentum, cfg.temperature) == (131072, 0.9995, 0.05)
    assert (cfg.lr, cfg.beta2, cfg.eps, cfg.weight_decay) == (5e-5, 0.98, 1e-6, 0.01)
    assert (cfg.steps, cfg.warmup_steps, cfg.schedule) == (500000, 20000, "linear")
    assert (cfg.ratio_min, cfg.ratio_max, cfg.augmentation) == (0.05, 0.5, "delete")
    cfg.check_launch(32)


def test_queue_not_multiple_of_global_batch_fails_before_training(world, tmp_path):
    cfg = config(queue_size=1000, steps=20)
    with pytest.raises(InputError, match=r"queue_size: .*1000 is not a multiple .* 64"):
        pretrain(cfg, world["model"], {"demo": world["shards"]}, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()
    failed = json.loads((tmp_path / "run" / "failed.json").read_text())
    assert "queue_size" in failed["error"]  # for later attempts: see the retry tests


def test_missing_checkpoint_on_required_resume(world, tmp_path):
    with pytest.raises(InputError, match="no checkpoint"):
        pretrain(
            config(steps=20), world["model"], {"demo": world["shards"]}, tmp_path, resume="require"
        )


def test_dangling_latest_pointer_is_an_error_not_a_fresh_start(world, tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest").write_text("step-00000100\n")
    with pytest.raises(InputError, match="missing or incomplete"):
        pretrain(config(steps=20), world["model"], {"demo": world["shards"]}, tmp_path)


def test_resume_with_another_configuration_is_refused(world, tmp_path):
    sources = {"demo": world["shards"]}
    small = {"steps": 20, "batch_size_per_device": 8, "checkpoint_every": 2}
    pretrain(config(**small), world["model"], sources, tmp_path, stop_at=2)
    with pytest.raises(
        InputError,
        match=r"differs from the one the checkpoints .* were made with \(lr: 0.0005 -> 0.001\)",
    ):
        pretrain(config(**small, lr=1e-3), world["model"], sources, tmp_path)


# --------------------------------------------------------------------------- retries


def test_an_error_a_retry_cannot_fix_is_not_repeated_by_later_attempts(world, tmp_path):
    sources, run = {"demo": world["shards"]}, tmp_path / "run"
    bad = config(queue_size=1000, steps=20)
    with pytest.raises(InputError, match="queue_size") as first:
        pretrain(bad, world["model"], sources, run, attempt=1)
    assert not isinstance(first.value, NotRetried)
    # Snakemake's attempt 2 of the same configuration stops at once with the first error.
    with pytest.raises(NotRetried, match=r"attempt 2 not run: attempt 1 failed .*queue_size"):
        pretrain(bad, world["model"], sources, run, attempt=2)
    # A corrected configuration is not blocked by the record, nor is a new Snakemake run
    # (attempt 1), whose user may have fixed what the error named.
    good = config(queue_size=1024, steps=20, batch_size_per_device=8)
    assert pretrain(good, world["model"], sources, run, attempt=3, stop_at=1)["step"] == 1
    with pytest.raises(InputError, match="queue_size") as again:
        pretrain(bad, world["model"], sources, tmp_path / "other", attempt=1)
    assert not isinstance(again.value, NotRetried)


def test_a_config_edit_loses_nothing_and_a_finished_run_is_not_trained_again(world, tmp_path):
    sources, run, out = {"demo": world["shards"]}, tmp_path / "run", tmp_path / "model"
    cfg = config(steps=3, warmup_steps=1, batch_size_per_device=8)
    pretrain(cfg, world["model"], sources, run, out)
    weights = load_file(out / "model.safetensors")
    shutil.rmtree(out)  # what Snakemake does to a job's output before running it again
    with pytest.raises(InputError, match=r"pretraining.demo: .*\(lr: 0.0005 -> 0.001\)"):
        pretrain(
            config(steps=3, warmup_steps=1, batch_size_per_device=8, lr=1e-3),
            world["model"],
            sources,
            run,
            out,
        )
    assert (run / "export" / "model.safetensors").is_file()  # the finished model is kept
    assert "lr: 0.0005 -> 0.001" in (run / "failed.json").read_text()
    # The same configuration again (e.g. only log_every changed): the kept export is
    # published without loading a checkpoint, bit for bit.
    before = (run / "checkpoints" / "latest").stat().st_mtime_ns
    same = config(steps=3, warmup_steps=1, batch_size_per_device=8, log_every=1)
    summary = pretrain(same, world["model"], sources, run, out)
    assert summary["step"] == 3
    assert (run / "checkpoints" / "latest").stat().st_mtime_ns == before
    again = load_file(out / "model.safetensors")
    assert all(torch.equal(again[k], weights[k]) for k in weights)


HOLD_LOCK = """
import sys, time
from contriever_repro.training.runfolder import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_a_second_writer_is_refused_until_the_holder_is_gone(world, tmp_path):
    run = tmp_path / "run"
    cfg = config(steps=20, batch_size_per_device=8)
    # An orphaned trainer (its Snakemake killed with -9) still holds the folder.
    holder = _start([sys.executable, "-c", HOLD_LOCK, str(run)])
    assert holder.stdout.readline().decode().strip() == "locked"
    try:
        with pytest.raises(RunFolderBusy) as busy:
            pretrain(cfg, world["model"], {"demo": world["shards"]}, run, stop_at=1)
        message = str(busy.value)
        assert str(run) in message and f"pid {holder.pid} on host {socket.gethostname()}" in message
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The kernel dropped the lock with its holder: no stale lock to clean up by hand.
    assert pretrain(cfg, world["model"], {"demo": world["shards"]}, run, stop_at=1)["step"] == 1


def test_a_second_trainer_process_on_the_same_folder_exits_at_once(world, tmp_path):
    run_dir, model = tmp_path / "run", tmp_path / "model"
    first = _start(_cli(world, run_dir, model, steps=400))
    try:
        _wait_for_steps(run_dir, first, 1)
        second = _run(_cli(world, run_dir, tmp_path / "model2", steps=400))
        assert second.returncode == 2, second.stderr[-3000:]
        assert f"is being written by another trainer: pid {first.pid} on host" in second.stderr
        assert first.poll() is None  # the first one is not disturbed
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


def test_tokenizer_mismatch_between_shards_and_model(world, tmp_path, minilm_path):
    with pytest.raises(InputError, match="tokeni"):
        pretrain(config(steps=20), minilm_path, {"demo": world["shards"]}, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_missing_source_folder(world, tmp_path):
    with pytest.raises(InputError, match="source 'demo'.*does not exist"):
        pretrain(config(steps=20), world["model"], {"demo": tmp_path / "nope"}, tmp_path / "run")


def test_empty_and_non_utf8_corpus_files_fail_at_tokenisation(world, tmp_path):
    tokenizer = load_tokenizer(world["model"])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(InputError, match="empty.txt.*no text"):
        tokenize_text_file(empty, tokenizer, tmp_path / "out" / "empty")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\nbroken \xff line\n")
    with pytest.raises(InputError, match=r"bad.txt:2: not valid UTF-8"):
        tokenize_text_file(bad, tokenizer, tmp_path / "out" / "bad")
    assert not any((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True


# --------------------------------------------------------------------------- real text


@pytest.fixture(scope="module")
def real_text(shared_data):
    path = shared_data / "text" / "wikipedia-summaries" / "en.txt"
    if not path.exists():
        pytest.skip("../shared/data/text is not available")
    return path


def test_real_wikipedia_text_with_minilm(real_text, minilm_path, tmp_path):
    """Tokenise real Wikipedia leads and multilingual sentences, and take a few MoCo steps
    from the real all-MiniLM-L6-v2 encoder; its export reloads with AutoModel."""
    from transformers import AutoModel

    tokenizer = load_tokenizer(minilm_path)
    sources = {}
    for name, text in (
        ("wiki", real_text),
        ("leipzig-fr", real_text.parents[1] / "leipzig-sentences" / "fr.txt"),
    ):
        sources[name] = tmp_path / "shards" / name
        meta = tokenize_text_file(text, tokenizer, sources[name] / "part-000", normalize=True)
        assert meta["n_docs"] > 900 and meta["normalize"] is True
    cfg = PretrainConfig.from_dict(
        "minilm",
        {
            "tokenizer": "minilm",
            "sources": ["wiki", "leipzig-fr"],
            "batch_size_per_device": 8,
            "queue_size": 64,
            "steps": 3,
            "warmup_steps": 1,
            "nodes": 1,
            "gpus_per_node": 1,
            "num_workers": 0,
            "device": "cpu",
            "log_every": 1,
        },
    )
    out = tmp_path / "model"
    pretrain(cfg, minilm_path, sources, tmp_path / "run", out)
    curve = read_metrics(tmp_path / "run")
    # Step 1 scores real keys against the random unit-norm queue, which MiniLM's
    # unnormalised positives beat by far (loss ~0); from step 2 the queue holds real keys.
    assert len(curve) == 3 and all(r["stdq"] > 0 and r["loss"] >= 0 for r in curve)
    assert curve[1]["loss"] > 1.0
    reloaded = AutoModel.from_pretrained(out)
    original = AutoModel.from_pretrained(minilm_path)
    moved = [
        k
        for k, v in reloaded.state_dict().items()
        if k in original.state_dict() and not torch.equal(v, original.state_dict()[k])
    ]
    assert len(moved) > 50  # trained weights, not the initialisation
    assert json.loads((out / "pretraining.json").read_text())["step"] == 3


def test_two_cpu_processes_under_torchrun(world, tmp_path):
    """The distributed path (DDP, gathered keys, per-rank checkpoints) on 2 gloo processes."""
    from contriever_repro.data.corpora import split_text_file
    from contriever_repro.training.launch import launch_prefix

    tokenizer = load_tokenizer(world["model"])
    shards = tmp_path / "shards"
    for piece in split_text_file(world["text"], 2, tmp_path / "pieces"):
        tokenize_text_file(piece, tokenizer, shards / piece.stem)
    spec = {**DEMO, "steps": 4, "warmup_steps": 1, "batch_size_per_device": 8}
    spec.update(queue_size=64, gpus_per_node=2, log_every=1, checkpoint_every=2)
    cmd = launch_prefix(sys.executable, 1, 2).split() + [str(SCRIPT), "--name", "ddp"]
    cmd += ["--experiment", json.dumps(spec), "--init", str(world["model"])]
    cmd += ["--source", f"demo={shards}", "--run-dir", str(tmp_path / "run")]
    cmd += ["--export", str(tmp_path / "model"), "--threads", "1"]
    result = _run(cmd)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2, 3, 4]
    final = tmp_path / "run" / "checkpoints" / "step-00000004"
    assert json.loads((final / "meta.json").read_text())["world_size"] == 2
    assert {p.name for p in final.iterdir()} >= {"state.pt", "rank-0.pt", "rank-1.pt"}
    assert (tmp_path / "model" / "model.safetensors").is_file()
    # The per-rank streams and RNG states cannot be mapped onto another world size (without
    # its kept export the finished run has to be resumed from its checkpoint).
    shutil.rmtree(tmp_path / "run" / "export")
    with pytest.raises(InputError, match="written by 2 processes but this run has 1"):
        pretrain(
            PretrainConfig.from_dict("ddp", spec),
            world["model"],
            {"demo": shards},
            tmp_path / "run",
        )


def test_two_nodes_in_one_slurm_step_stop_on_sigusr1_with_a_checkpoint(world, tmp_path):
    """The multi-node route (launch.py): one launcher per node started by srun, which
    reads the step's node list, runs torchrun, and outlives SLURM's SIGUSR1, sent to
    every process of the step: the trainers checkpoint and every node exits 75. Two
    "nodes" on this host, CPU processes."""
    import psutil

    from contriever_repro.data.corpora import split_text_file

    tokenizer = load_tokenizer(world["model"])
    shards = tmp_path / "shards"
    for piece in split_text_file(world["text"], 2, tmp_path / "pieces"):
        tokenize_text_file(piece, tokenizer, shards / piece.stem)
    spec = {**DEMO, "steps": 400, "warmup_steps": 1, "batch_size_per_device": 8}
    spec.update(queue_size=64, nodes=2, gpus_per_node=1, log_every=1)
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "contriever_repro.training.launch", "--nnodes", "2"]
    cmd += ["--nproc-per-node", "1", "--", str(SCRIPT), "--name", "nodes", "--attempt", "1"]
    cmd += ["--experiment", json.dumps(spec), "--init", str(world["model"])]
    cmd += ["--source", f"demo={shards}", "--run-dir", str(run_dir), "--threads", "1"]
    step = {  # what srun sets inside the step (the job's own SLURM_* are gone)
        "SLURM_STEP_NODELIST": "localhost",
        "SLURM_JOB_ID": str(random.randint(100, 999)),
        "SLURM_STEP_ID": "0",
        "PYTHONPATH": str(ROOT / "lib"),
    }
    nodes = [
        subprocess.Popen(cmd, stderr=subprocess.PIPE, env={**os.environ, **step}) for _ in range(2)
    ]
    try:
        _wait_for_steps(run_dir, nodes[0], 2)
        for node in nodes:
            for proc in [psutil.Process(node.pid), *psutil.Process(node.pid).children(True)]:
                proc.send_signal(signal.SIGUSR1)
        errors = [node.communicate(timeout=120)[1].decode() for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    assert [node.returncode for node in nodes] == [PREEMPTED_EXIT_CODE] * 2, errors[0][-3000:]
    stopped_at = read_metrics(run_dir)[-1]["step"]
    assert stopped_at < 400
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    assert latest == f"step-{stopped_at:08d}"
    meta = json.loads((run_dir / "checkpoints" / latest / "meta.json").read_text())
    assert meta["world_size"] == 2
    assert (
        f"stopped at step {stopped_at} (signal SIGUSR1)" in (run_dir / "logs/train.log").read_text()
    )


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_gradient_accumulation_enqueues_every_micro_batch(world, tmp_path, precision):
    cfg = config(
        steps=3, warmup_steps=1, batch_size_per_device=8, grad_accumulation=2,
        queue_size=256, precision=precision, log_every=1,
    )  # fmt: skip
    summary = pretrain(cfg, world["model"], {"demo": world["shards"]}, tmp_path)
    assert summary["global_batch"] == 16
    state = torch.load(tmp_path / "checkpoints/step-00000003/state.pt", weights_only=False)
    assert int(state["model"]["queue_ptr"]) == 3 * 2 * 8  # 6 micro-batches of 8 keys
    rank = torch.load(tmp_path / "checkpoints/step-00000003/rank-0.pt", weights_only=False)
    assert rank["next_batch"] == 6 and rank["sampler"]["position"] == 48
    assert all(r["loss"] == r["loss"] for r in read_metrics(tmp_path))  # no NaN


def test_tf32_trains_as_fp32_on_cpu_and_restores_the_matmul_modes(world, tmp_path):
    """`precision: tf32` only switches CUDA's TF32 flags, for the run and no longer."""
    from contriever_repro.training.loop import _set_tf32

    modes = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    weights = {}
    for precision in ("fp32", "tf32"):
        cfg = config(steps=2, warmup_steps=1, batch_size_per_device=8, queue_size=64,
                     precision=precision, log_every=1)  # fmt: skip
        pretrain(cfg, world["model"], {"demo": world["shards"]}, tmp_path / precision)
        state = torch.load(tmp_path / precision / "checkpoints/step-00000002/state.pt")
        weights[precision] = state["model"]
    assert all(torch.equal(v, weights["tf32"][k]) for k, v in weights["fp32"].items())
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == modes
    assert _set_tf32(True, True) == modes
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    _set_tf32(*modes)
