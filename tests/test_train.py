"""train.py end to end: outputs, exact resume, DDP equivalence, checkpoint safety, clear errors."""
import json
import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch

import train
from data import Collator, Tokenizer, get_sample
from data.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--n_layer", "1", "--n_embd", "32", "--n_head", "2", "--mlp_hidden", "64", "--vit_layers", "2",
        "--vit_embd", "32", "--vit_heads", "2", "--vit_mlp", "64", "--threads", "1"]


def run(out, *extra):
    return train.main(["--model", "llava", "--out_dir", str(out), "--eval_samples", "8",
                       "--final_samples", "8", *TINY, *extra])


def losses(out):
    return [(r["phase"], r["step"], r["loss"]) for r in map(json.loads, open(os.path.join(out, "log.jsonl")))
            if r["kind"] == "train"]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """The whole default recipe, 3 steps a phase."""
    out = tmp_path_factory.mktemp("recipe")
    res = run(out, "--steps", "3", "--batch_size", "8")
    return out, res


def test_recipe_writes_checkpoints_log_plot_results(recipe):
    """Every phase leaves a checkpoint; the log, the plot and results.json exist and agree."""
    out, res = recipe
    for phase in ("text", "vision", "align", "instruct"):
        assert os.path.isfile(out / f"{phase}.pt")
    assert (out / "plots.png").stat().st_size > 10_000
    recs = [json.loads(line) for line in open(out / "log.jsonl")]
    assert [r["phase"] for r in recs if r["kind"] == "phase"] == ["text", "vision", "align", "instruct"]
    assert sum(r["kind"] == "train" for r in recs) == 12
    assert json.load(open(out / "results.json"))["test"]["vqa"]["score"] == res["test"]["vqa"]["score"]
    assert set(res["test"]["vqa"]["kinds"]) <= {"colour", "shape", "position", "size", "count"}


def test_checkpoint_is_self_contained(recipe):
    """load_model rebuilds the model from the checkpoint alone, weights identical, strict."""
    out, _ = recipe
    model, tok, ck = train.load_model(str(out / "instruct.pt"))
    assert ck["phase"] == "instruct" and ck["done"] and len(tok) == ck["config"]["vocab_size"]
    sd = torch.load(out / "instruct.pt", weights_only=True)["model"]
    assert all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())


def test_checkpoint_of_another_version_says_so(recipe, tmp_path):
    """A checkpoint whose config holds a field the code no longer has fails with a clear error."""
    out, _ = recipe
    ck = torch.load(out / "instruct.pt", weights_only=True)
    ck["config"]["retired_field"] = 1
    torch.save(ck, tmp_path / "old.pt")
    with pytest.raises(UserError, match=r"another version of llava.*\['retired_field'\]"):
        train.load_model(str(tmp_path / "old.pt"))


def test_default_evaluation_is_four_times_a_phase_at_most_and_at_its_end(tmp_path):
    """Without --eval_every a phase is evaluated every ceil(steps/4) steps and at its last step."""
    run(tmp_path, "--phase", "align", "--steps", "6", "--batch_size", "4", "--no_final_eval")
    recs = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert [r["step"] for r in recs if r["kind"] == "eval"] == [2, 4, 6]


def test_resume_is_bit_exact(tmp_path, monkeypatch):
    """Interrupt a phase after a mid-phase checkpoint, --resume, and the loss curve and weights
    equal an uninterrupted run's exactly (CPU): model, optimizer, schedule, step, RNG and data."""
    args = ["--phase", "instruct", "--steps", "6", "--eval_every", "3", "--batch_size", "8", "--no_final_eval"]
    run(tmp_path / "a", *args)
    save = train.Trainer.save

    def crash_after_first_save(self, phase, step, *a, **k):
        save(self, phase, step, *a, **k)
        raise KeyboardInterrupt  # as if the job were killed right after step 3's checkpoint
    monkeypatch.setattr(train.Trainer, "save", crash_after_first_save)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", *args)
    monkeypatch.setattr(train.Trainer, "save", save)
    assert len(losses(tmp_path / "b")) == 3
    run(tmp_path / "b", *args, "--resume")
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    wa = torch.load(tmp_path / "a" / "instruct.pt", weights_only=True)
    wb = torch.load(tmp_path / "b" / "instruct.pt", weights_only=True)
    assert all(torch.equal(v, wb["model"][k]) for k, v in wa["model"].items())


def test_grad_accumulation_equals_big_batch(tmp_path):
    """4 micro-batches of 2 give the same updates as one batch of 8 (token-weighted losses)."""
    common = ["--phase", "instruct", "--steps", "3", "--no_final_eval", "--eval_every", "100"]
    run(tmp_path / "big", *common, "--batch_size", "8")
    run(tmp_path / "acc", *common, "--batch_size", "2", "--grad_accum", "4")
    for (_, _, x), (_, _, y) in zip(losses(tmp_path / "big"), losses(tmp_path / "acc")):
        assert abs(x - y) < 1e-5


def test_length_groups_equal_one_batch(tmp_path):
    """A batch of 8 sorted by length and padded in 4 groups gives one padded batch's updates, on
    fewer token positions (the losses are token-weighted; images travel with their rows)."""
    common = ["--phase", "instruct", "--steps", "3", "--no_final_eval", "--eval_every", "100", "--batch_size", "8"]
    run(tmp_path / "one", *common)
    run(tmp_path / "groups", *common, "--length_groups", "4")
    a, b = losses(tmp_path / "one"), losses(tmp_path / "groups")
    assert len(a) == len(b) == 3 and all(abs(x - y) < 1e-5 for (_, _, x), (_, _, y) in zip(a, b))


def test_ddp_two_processes_equal_one(tmp_path):
    """torchrun with 2 CPU processes (gloo), 2 micro-batches of 2 each, matches one process with
    batch 8: same data, same token-weighted gradient. Tolerance 1e-4 on the loss (float sums of
    gradients across processes come in another order)."""
    common = ["--model", "llava", "--phase", "instruct", "--steps", "3", "--no_final_eval",
              "--eval_every", "100", "--eval_samples", "8", *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                    "29533", "train.py", *common, "--out_dir", str(tmp_path / "ddp"), "--batch_size", "2",
                    "--grad_accum", "2"], cwd=ROOT, env=env, check=True, capture_output=True, timeout=240)
    run(tmp_path / "one", "--phase", "instruct", "--steps", "3", "--no_final_eval", "--eval_every", "100",
        "--batch_size", "8")
    a, b = losses(tmp_path / "ddp"), losses(tmp_path / "one")
    assert len(a) == len(b) == 3
    for (_, _, x), (_, _, y) in zip(a, b):
        assert abs(x - y) < 1e-4, (a, b)


def test_ddp_accumulation_all_reduces_once_per_step(tmp_path, monkeypatch):
    """Under DDP, 3 micro-batches per step cost as many gradient all-reduces as 1 (no_sync on the
    others). Counted with a DDP communication hook in a one-process gloo group."""
    calls = []

    class CountingDDP(train.DDP):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)

            def hook(state, bucket):
                calls.append(1)
                fut = torch.futures.Future()
                fut.set_result(bucket.buffer())
                return fut
            self.register_comm_hook(None, hook)
    monkeypatch.setattr(train, "DDP", CountingDDP)
    for k, v in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29541").items():
        monkeypatch.setenv(k, v)
    n = {}
    for accum in (1, 3):
        calls.clear()
        run(tmp_path / str(accum), "--phase", "instruct", "--steps", "2", "--grad_accum", str(accum),
            "--batch_size", "2", "--no_final_eval", "--eval_every", "100")
        n[accum] = len(calls)
    assert n[1] == n[3] > 0, n


@pytest.mark.parametrize("ddp, local_rank, expect", [(False, None, "cuda:1"), (True, "3", "cuda:3")])
def test_cuda_device_gets_an_index(monkeypatch, ddp, local_rank, expect):
    """A bare 'cuda' (also what 'auto' picks on a GPU) becomes an indexed device before set_device,
    which rejects 'cuda' without one; the first run on a GPU machine crashed on exactly that."""
    calls = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    if local_rank:
        monkeypatch.setenv("LOCAL_RANK", local_rank)
    trainer = type("T", (), {"ddp": ddp})()
    for name in ("cuda", "auto"):
        assert str(train.Trainer.pick_device(trainer, name)) == expect
    assert [str(d) for d in calls] == [expect, expect]


def test_phase_weight_decay_by_name_prefix():
    """A phase's weight_decay gives the matrices under a name prefix their own decay; other matrices
    keep --weight_decay, and norms, biases and gains are never decayed."""
    m = torch.nn.ModuleDict({"decoder": torch.nn.ModuleDict({"blocks": torch.nn.Linear(4, 4),
                                                             "emb": torch.nn.Embedding(8, 4)}),
                             "projector": torch.nn.Linear(4, 4)})
    opt = train.make_optimizer(m, 1e-3, 0.1, 0.95, "cpu", {"decoder.blocks": 1.0})
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decay[id(m.decoder.blocks.weight)] == 1.0
    assert decay[id(m.decoder.emb.weight)] == decay[id(m.projector.weight)] == 0.1
    assert decay[id(m.decoder.blocks.bias)] == decay[id(m.projector.bias)] == 0.0
    assert len(decay) == len(list(m.parameters()))
    assert opt.defaults["fused"]  # one fused kernel for all parameters on CPU (and CUDA)
    with pytest.raises(ValueError, match="names no parameter"):
        train.make_optimizer(m, 1e-3, 0.1, 0.95, "cpu", {"decoder.block": 1.0})


def test_state_dict_prefixes_are_stripped():
    """torch.compile's _orig_mod. and DDP's module. prefixes do not leak into checkpoints."""
    sd = {"module._orig_mod.decoder.emb.weight": torch.zeros(1), "_orig_mod.projector.0.bias": torch.zeros(1)}
    assert set(train.clean_state_dict(sd)) == {"decoder.emb.weight", "projector.0.bias"}


def test_strict_load_names_missing_and_unexpected_keys(recipe):
    """A checkpoint that does not fit says which keys are missing / unexpected / mis-shaped."""
    out, _ = recipe
    model, _, ck = train.load_model(str(out / "instruct.pt"))
    sd = dict(ck["model"])
    sd["decoder.extra"] = sd.pop("projector.0.weight")
    with pytest.raises(ValueError, match=r"missing keys: \['projector.0.weight'\][\s\S]*unexpected keys: \['decoder.extra'\]"):
        train.load_weights(model, sd, "test")
    sd = dict(ck["model"])
    sd["projector.0.bias"] = torch.zeros(3)
    with pytest.raises(ValueError, match="shape mismatches"):
        train.load_weights(model, sd, "test")


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoints_load_weights_only(tmp_path):
    """A checkpoint holding pickled code is refused (weights_only=True), with a clear message."""
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": Evil()}, f)
    with pytest.raises(UserError, match="unreadable or corrupt"):
        train.read_checkpoint(str(path))


def test_save_is_atomic(tmp_path, monkeypatch):
    """A crash while writing leaves the previous checkpoint intact."""
    path = str(tmp_path / "c.pt")
    train.save_atomic({"x": torch.ones(2)}, path)

    def broken_save(obj, f):
        open(f, "wb").write(b"half")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        train.save_atomic({"x": torch.zeros(2)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.ones(2))


def fails(capsys, argv, message):
    """train.py exits with code 2 and one clear line on stderr, no traceback."""
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and message in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("argv, message", [
    (["--model", "gpt5"], "unknown model 'gpt5'"),
    (["--model", "llava", "--phase", "pretrain"], "unknown phase 'pretrain'"),
    (["--model", "llava", "--n_layers", "3"], "unknown flag '--n_layers'"),
    (["--model", "llava", "--n_layer", "three"], "--n_layer expects a int"),
    (["--model", "llava", "--init_from", "nowhere.pt"], "checkpoint 'nowhere.pt' not found"),
    # zero and nonsense values are refused at parse time, never read as "the recipe's value"
    (["--model", "llava", "--steps", "0"], "argument --steps: expects a whole number above 0, got '0'"),
    (["--model", "llava", "--steps", "-5"], "argument --steps: expects a whole number above 0"),
    (["--model", "llava", "--batch_size", "0"], "argument --batch_size: expects a whole number above 0"),
    (["--model", "llava", "--grad_accum", "0"], "argument --grad_accum: expects a whole number above 0"),
    (["--model", "llava", "--lr", "0"], "argument --lr: expects a number above 0"),
    (["--model", "llava", "--batch_size", "8", "--length_groups", "9"],
     "phase 'text': length_groups 9 is more than its batch of 8 rows; pass --length_groups 8 or fewer"),
    (["--model", "llava", "--lr=-1e-3"], "argument --lr: expects a number above 0"),
    (["--model", "llava", "--eval_samples", "0"], "argument --eval_samples: expects a whole number above 0"),
    (["--model", "llava", "--dtype", "fp16"], "argument --dtype: invalid choice: 'fp16'"),
    (["--model", "llava", "--device", "tpu"], "argument --device: expects auto, cpu, cuda, cuda:N or mps"),
    (["--model", "llava", "--proj_norm", "maybe"], "--proj_norm expects true/false (or 1/0, yes/no), got 'maybe'"),
    (["--model", "llava", "--n_embd", "100", "--n_head", "3"], "bad nano_llava Config: n_embd must divide by n_head"),
    (["--model", "llava", "--resume", "--overwrite"], "pass one"),
    (["--model", "llava", "--tasks", "vqa:1"], "--tasks and --eval change one phase: name it with --phase"),
    (["--model", "llava", "--phase", "instruct", "--tasks", "vqa:1,riddles:2"], "unknown task 'riddles'"),
    (["--model", "llava", "--phase", "instruct", "--tasks", "vqa:often"], "task weight 'often' of 'vqa' is not a"),
    (["--model", "llava", "--phase", "instruct", "--tasks", "vqa:0"], "the task weights 'vqa:0' sum to 0"),
    (["--model", "llava", "--phase", "instruct", "--eval", "vqa,riddles"], "unknown task 'riddles'"),
    (["--model", "flamingo", "--mix", "caption:1,vqa:-2"], "task weight of 'vqa' must be a number, 0 or more"),
])
def test_bad_arguments_give_one_clear_line(tmp_path, capsys, argv, message):
    err = fails(capsys, [*argv, "--out_dir", str(tmp_path)], message)
    assert len(err.splitlines()) == 1 and not os.listdir(tmp_path)


def test_bool_fields_take_plain_words(tmp_path):
    for word, value in (("false", False), ("0", False), ("No", False), ("yes", True), ("1", True)):
        _, _, overrides = train.parse_args(["--model", "llava", "--proj_norm", word])
        assert overrides["proj_norm"] is value


def test_corrupt_checkpoint_and_config_mismatch(tmp_path, recipe, capsys):
    out, _ = recipe
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    fails(capsys, ["--model", "llava", "--init_from", str(bad), "--out_dir", str(tmp_path / "a")], "unreadable or corrupt")
    fails(capsys, ["--model", "llava", "--init_from", str(out / "instruct.pt"), "--n_embd", "64", "--out_dir",
                   str(tmp_path / "b"), *TINY[2:]], "does not fit this model")
    fails(capsys, ["--model", "llava", "--resume", "--out_dir", str(tmp_path / "empty")], "holds no run to resume")


# ----------------------------------------------------------------------------- never lose a run


def files(out):
    """Every file of a run folder with its size and modification time."""
    return {f: (os.path.getsize(out / f), os.path.getmtime(out / f)) for f in os.listdir(out)}


def test_a_fresh_run_never_touches_another_runs_folder(tmp_path, capsys):
    """Into a folder that holds a run, a fresh run is refused (naming --resume, another --out_dir and
    --overwrite) and changes nothing; so does one whose flags fail (a missing --data), even with
    --overwrite; --overwrite replaces the run only once everything checks out."""
    out = tmp_path / "run"
    run(out, "--phase", "align", "--steps", "2", "--no_final_eval")
    before = files(out)
    err = fails(capsys, ["--model", "llava", "--phase", "instruct", "--out_dir", str(out), *TINY], "holds another run")
    assert "--resume" in err and "--out_dir" in err and "--overwrite" in err and files(out) == before
    fails(capsys, ["--model", "llava", "--out_dir", str(out), "--data", str(tmp_path / "nonexistent"), "--overwrite",
                   "--phase", "instruct", *TINY], "does not exist")
    assert files(out) == before
    run(out, "--phase", "instruct", "--steps", "2", "--no_final_eval", "--overwrite")
    assert not (out / "align.pt").exists() and (out / "instruct.pt").exists()
    assert {r["phase"] for r in map(json.loads, open(out / "log.jsonl")) if "phase" in r} == {"instruct"}


def test_resume_continues_only_its_own_run(tmp_path, monkeypatch):
    """The stale-resume sequence: a finished 3-step run, then (with --overwrite) a 60-step run with
    another seed, killed in 'vision', and a checkpoint of the first run dropped into the folder.
    --resume continues the second run from its own 'vision' checkpoint, never the foreign file."""
    first, out = tmp_path / "first", tmp_path / "run"
    run(first, "--steps", "3", "--batch_size", "4", "--no_final_eval")
    save = train.Trainer.save

    def killed_in_vision(self, phase, step, *a, **k):
        save(self, phase, step, *a, **k)
        if phase == "vision":
            raise KeyboardInterrupt
    monkeypatch.setattr(train.Trainer, "save", killed_in_vision)
    args = ["--steps", "60", "--eval_every", "30", "--batch_size", "2", "--seed", "1", "--no_final_eval"]
    with pytest.raises(KeyboardInterrupt):
        run(out, *args)
    monkeypatch.setattr(train.Trainer, "save", save)
    shutil.copy(first / "instruct.pt", out / "instruct.pt")  # another run's finished checkpoint
    run(out, *args, "--resume")
    recs = [json.loads(line) for line in open(out / "log.jsonl")]
    steps = [(r["phase"], r["step"]) for r in recs if r["kind"] == "train"]
    assert steps[60:62] == [("vision", 1), ("vision", 2)] and steps[90:92] == [("vision", 31), ("vision", 32)]
    assert sum(r["kind"] == "train" for r in recs) == 4 * 60
    assert torch.load(out / "instruct.pt", weights_only=True)["run"]["seed"] == 1


def test_resume_with_changed_flags_is_refused(tmp_path, monkeypatch, capsys):
    """--steps 8 --resume after --steps 4 (or another seed, lr or Config field) says what differs,
    with both values, instead of exiting having trained nothing."""
    out = tmp_path / "run"
    args = ["--phase", "instruct", "--steps", "4", "--batch_size", "2", "--no_final_eval", "--eval_every", "2"]
    run(out, *args)
    base = ["--model", "llava", "--out_dir", str(out), "--eval_samples", "8", *TINY, *args, "--resume"]
    err = fails(capsys, [*base, "--steps", "8"], "these differ")
    assert "phases.instruct.steps: 4 in the run, 8 now" in err
    assert "seed: 0 in the run, 1 now" in fails(capsys, [*base, "--seed", "1"], "these differ")
    assert "phases.instruct.lr: 0.003 in the run, 0.001 now" in fails(capsys, [*base, "--lr", "1e-3"], "these differ")
    err = fails(capsys, [*base, "--tasks", "vqa"], "these differ")
    assert "phases.instruct.tasks.vqa: None in the run, 1.0 now" in err and "tasks.conversation: 2.0 in the run" in err
    err = fails(capsys, [*base, "--mlp_hidden", "96"], "these differ")
    assert "config.mlp_hidden: 64 in the run, 96 now" in err


def test_a_partial_last_log_line_is_dropped_on_resume(tmp_path, monkeypatch, capsys):
    """A crash mid-write leaves half a JSON line: --resume drops it, says so, and goes on."""
    args = ["--phase", "instruct", "--steps", "4", "--eval_every", "2", "--batch_size", "2", "--no_final_eval"]
    save = train.Trainer.save

    def crash(self, phase, step, *a, **k):
        save(self, phase, step, *a, **k)
        raise KeyboardInterrupt
    monkeypatch.setattr(train.Trainer, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, *args)
    monkeypatch.setattr(train.Trainer, "save", save)
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"kind": "train", "phase": "instr')
    run(tmp_path, *args, "--resume")
    assert "dropped a partial last line" in capsys.readouterr().out
    assert [r["step"] for r in map(json.loads, open(tmp_path / "log.jsonl")) if r["kind"] == "train"] == [1, 2, 3, 4]


def test_time_budget_stops_a_phase_cleanly(tmp_path):
    """--max_minutes ends a phase early with an evaluated, finished checkpoint."""
    run(tmp_path, "--phase", "instruct", "--steps", "100000", "--max_minutes", "0.05", "--batch_size", "4",
        "--no_final_eval")
    ck = torch.load(tmp_path / "instruct.pt", weights_only=True)
    assert ck["done"] and 0 < ck["step"] < 100000
    assert [r for r in map(json.loads, open(tmp_path / "log.jsonl")) if r["kind"] == "eval"]


def test_tasks_and_eval_replace_one_phases_mixture(tmp_path, monkeypatch):
    """--phase instruct --tasks vqa:1,caption:3 --eval vqa_one: the batches come from that mixture,
    the judged tasks are those named, and run.json records both (so --resume checks them)."""
    seen = []
    encode = Collator.encode
    monkeypatch.setattr(Collator, "encode", lambda self, s: seen.append(s["task"]) or encode(self, s))
    run(tmp_path, "--phase", "instruct", "--steps", "6", "--batch_size", "8", "--tasks", "vqa:1,caption:3",
        "--eval", "vqa_one", "--eval_every", "6", "--final_samples", "4")
    trained = seen[:48]  # the 6 steps' batches come first: evaluation encodes after them
    assert set(trained) == {"vqa", "caption"} and trained.count("caption") > trained.count("vqa")
    evals = [r for r in map(json.loads, open(tmp_path / "log.jsonl")) if r["kind"] == "eval"]
    assert [set(r["scores"]) for r in evals] == [{"vqa_one"}]
    phase = json.load(open(tmp_path / "run.json"))["phases"]["instruct"]
    assert phase["tasks"] == {"vqa": 1.0, "caption": 3.0} and phase["eval"] == ["vqa_one"]


# ----------------------------------------------------------------------------- your own data


def test_trains_on_an_on_disk_folder_in_epochs(tmp_path, monkeypatch):
    """--data reads every record of a 150-record folder once per epoch (shuffled), holds a share
    out by a hash of the id and judges the run on those, never training on them."""
    from data import write_folder
    from data.folder import Folder
    folder = write_folder(str(tmp_path / "mydata"), "vqa", "train", 150)
    held = {i for i, (_, s) in enumerate(Folder(folder).records) if train.held_out(s, 0.1)}
    steps = -(-(150 - len(held)) // 4)  # one epoch
    read = []
    getitem = Folder.__getitem__
    monkeypatch.setattr(Folder, "__getitem__", lambda self, i: read.append(i) or getitem(self, i))
    res = run(tmp_path / "out", "--phase", "instruct", "--data", folder, "--steps", str(steps), "--batch_size", "4",
              "--eval_every", "100", "--eval_samples", "30", "--final_samples", "30")
    trained = read[:steps * 4]
    assert 3 < len(held) < 30 and not held & set(trained)  # the held-out records are never trained on
    assert set(trained) == set(range(150)) - held and trained != sorted(trained)  # all of them, shuffled
    assert set(res["test"]) == {"vqa"} and res["test"]["vqa"]["kinds"]  # judged on its own records, by their task
    evals = [r for r in map(json.loads, open(tmp_path / "out" / "log.jsonl")) if r["kind"] == "eval"]
    assert set(evals[-1]["scores"]) == {"vqa"}


def test_bad_records_are_all_named_before_anything_is_written(tmp_path, capsys):
    from data import write_folder
    folder = write_folder(str(tmp_path / "mydata"), "vqa", "train", 20)
    lines = open(os.path.join(folder, "data.jsonl")).read().splitlines()
    lines[3] = lines[3].replace("images/3.png", "images/missing.png")
    lines[7] = lines[7].replace("<image>", "<image> <image>")
    lines[11] = lines[11][:20]
    open(os.path.join(folder, "data.jsonl"), "w").write("\n".join(lines) + "\n")
    err = fails(capsys, ["--model", "llava", "--phase", "instruct", "--data", folder, "--out_dir",
                         str(tmp_path / "out"), *TINY], "3 bad records")
    assert "line 4" in err and "line 8" in err and "line 12" in err and not (tmp_path / "out").exists()


def test_records_too_long_for_the_model_are_named_up_front(tmp_path, capsys):
    from data import write_folder
    folder = write_folder(str(tmp_path / "mydata"), "vqa", "train", 10)
    err = fails(capsys, ["--model", "llava", "--phase", "instruct", "--data", folder, "--max_seq", "12", "--out_dir",
                         str(tmp_path / "out"), *TINY], "10 records do not fit llava")
    assert "more than the model's max_seq=12" in err and not (tmp_path / "out").exists()


def llava_json(tmp_path, n=40):
    """A LLaVA-style JSON array of English captions about pictures in an image folder."""
    from PIL import Image
    (tmp_path / "pics").mkdir()
    colours = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 70, 230)}
    records = []
    for i in range(n):
        name = list(colours)[i % 3]
        Image.new("RGB", (48, 40), colours[name]).save(tmp_path / "pics" / f"{i}.jpg")
        answer = f"The picture is {name}" + (", like a ripe tomato." if name == "red" else ".")
        records.append({"id": f"pic{i}", "image": f"{i}.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the picture?" + (" Zebra?" if i == 5 else "")},
            {"from": "gpt", "value": answer}]})
    (tmp_path / "captions.json").write_text(json.dumps(records))
    return str(tmp_path / "captions.json"), str(tmp_path / "pics")


def test_a_llava_json_array_trains_with_a_fitted_tokenizer(tmp_path, recipe):
    """A LLaVA JSON array with an image folder trains from a toy checkpoint: the tokenizer is the
    toy one grown by the records' frequent words (saved beside the run and in its checkpoints), the
    embedding gains a row per new word, and every old row starts from the toy checkpoint."""
    data, pics = llava_json(tmp_path)
    toy = str(recipe[0] / "align.pt")
    flags = ["--phase", "instruct", "--init_from", toy, "--data", data, "--image_folder", pics]
    trainer = train.Trainer(*train.parse_args(["--model", "llava", "--out_dir", str(tmp_path / "out"), *TINY, *flags]))
    base, tok = Tokenizer(), trainer.tok
    assert tok.words[:len(base.words)] == base.words and {"The", "picture", "tomato"} <= set(tok.words)
    assert "Zebra" not in tok.words  # seen once, fewer than --min_word_count 2
    old = torch.load(toy, weights_only=True)["model"]["decoder.emb.weight"]
    emb = trainer.model.decoder.emb.weight
    assert emb.shape[0] == len(tok) > len(base) and torch.equal(emb[:len(base)], old)
    res = run(tmp_path / "out", *flags, "--steps", "2", "--batch_size", "4")
    ck = torch.load(tmp_path / "out" / "instruct.pt", weights_only=True)
    assert Tokenizer.load(str(tmp_path / "out" / "tokenizer.json")).words == ck["tokenizer"]["words"] == tok.words
    said = "The picture is red, like a ripe tomato."
    assert set(res["test"]) == {"captions"} and len(tok.encode(said)) < len(base.encode(said)) / 3


# ----------------------------------------------------------------------------- the contract's optional parts,
# on the stand-in model (tests/standin.py): media targets, loss="all", decode_media, aux, diagnostics,
# begin_phase, a phase objective

import standin  # noqa: E402  (tests/ is on the path)



@pytest.fixture
def standin_model(monkeypatch):
    monkeypatch.setitem(train.MODELS, "standin", "standin")
    tok = Tokenizer()
    torch.manual_seed(0)
    return standin.Model(train.build_config(standin, tok)), tok


def run_standin(out, *extra):
    return train.main(["--model", "standin", "--out_dir", str(out), "--eval_samples", "4", "--final_samples", "4",
                       "--threads", "1", *extra])


def test_answer_turns_generated_media_into_markers_and_items(standin_model, monkeypatch):
    """answer() hands the generated ids to decode_media: the reply holds one <image> marker and the
    image comes back decoded; an id past the tokenizer never reaches Tokenizer.decode."""
    model, tok = standin_model
    v, cfg = tok.stoi, model.cfg
    codes = [cfg.vocab_size + c for c in (0, 3, 1, 2)]
    monkeypatch.setattr(model, "generate", lambda tokens, *a: torch.tensor(
        [[cfg.boi_id, *codes, cfg.eoi_id, v["red"], tok.eos, v["blue"]]] * len(tokens)))
    prompt, _ = Collator.prompt(get_sample("text_to_image", "test", 0))
    replies, media = train.answer(model, train.phase_collator(model, tok, {}), [prompt], 9, "cpu")
    assert replies == ["<image> red"] and media[0]["image"].shape == (1, 3, 16, 16)
    assert torch.allclose(media[0]["image"][0, 0, ::8, ::8], (torch.tensor([[0, 3], [1, 2]]) + 0.5) / 4)


def test_answer_refuses_a_prompt_past_max_seq(standin_model):
    model, tok = standin_model
    prompt, _ = Collator.prompt(get_sample("text_to_image", "test", 0))
    with pytest.raises(ValueError, match="exceeds the model's max_seq=256"):
        train.answer(model, train.phase_collator(model, tok, {}), [prompt], 250, "cpu")


def test_answer_length_counts_the_expanded_media(standin_model, monkeypatch):
    """A drawn answer "<image>" is 6 positions for this model: evaluation asks for 6 + <eos> new
    tokens, not for the 2 its text would encode to."""
    model, tok = standin_model
    asked = []
    generate = model.generate
    monkeypatch.setattr(model, "generate", lambda t, m, n, *a: asked.append(n) or generate(t, m, n, *a))
    sets = {"text_to_image": [get_sample("text_to_image", "val", i) for i in range(2)]}
    train.score_replies(model, train.phase_collator(model, tok, {}), sets, "cpu")
    assert asked == [7]


def test_standin_recipe_logs_aux_lm_part_and_diagnostics(tmp_path, monkeypatch):
    """A recipe with an objective phase and a loss="all" phase with media targets trains end to end;
    the log splits each loss into the language-model part and the named aux terms, and carries the
    model's diagnostics at each evaluation; all are plotted; the drawn images are judged."""
    monkeypatch.setitem(train.MODELS, "standin", "standin")
    res = run_standin(tmp_path, "--steps", "3")
    recs = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    draw = [r for r in recs if r["kind"] == "train" and r["phase"] == "draw"]
    assert all(r["aux"]["z_loss"] > 0 and r["lm"] == pytest.approx(r["loss"] - r["aux"]["z_loss"]) for r in draw)
    evals = [r for r in recs if r["kind"] == "eval" and r["phase"] == "draw"]
    assert evals and all("head_norm" in r["diagnostics"] and "z_loss" in r["val_aux"] for r in evals)
    assert all(r["val_lm"] == pytest.approx(r["val_loss"] - r["val_aux"]["z_loss"]) for r in evals)
    warm = [r for r in recs if r["kind"] == "eval" and r["phase"] == "warm"]
    assert set(warm[-1]["scores"]) == {"caption"}  # the objective, scored teacher-forced
    assert 0 <= res["test"]["text_to_image"]["score"] <= 1 and (tmp_path / "plots.png").stat().st_size > 10_000


def test_media_targets_count_in_the_gradient_weights(tmp_path, monkeypatch):
    """With media targets and loss="all", 4 micro-batches of 2 still give one batch of 8's updates:
    the placeholders that carry loss are counted in each micro-batch's weight."""
    monkeypatch.setitem(train.MODELS, "standin", "standin")
    common = ["--phase", "draw", "--steps", "3", "--no_final_eval", "--eval_every", "100"]
    run_standin(tmp_path / "big", *common, "--batch_size", "8")
    run_standin(tmp_path / "acc", *common, "--batch_size", "2", "--grad_accum", "4")
    a, b = losses(tmp_path / "big"), losses(tmp_path / "acc")
    assert len(a) == 3 and all(abs(x - y) < 1e-5 for (_, _, x), (_, _, y) in zip(a, b))


def test_begin_phase_runs_once_when_a_phase_starts_fresh(tmp_path, monkeypatch):
    """begin_phase runs once per phase of a run; never again on --resume, in load_model, or with
    --init_from weights that have been through that phase already."""
    monkeypatch.setitem(train.MODELS, "standin", "standin")
    calls = []
    begin = standin.Model.begin_phase
    monkeypatch.setattr(standin.Model, "begin_phase", lambda self, name: calls.append(name) or begin(self, name))
    save = train.Trainer.save

    def crash_in_draw(self, phase, step, *a, **k):
        save(self, phase, step, *a, **k)
        if phase == "draw":
            raise KeyboardInterrupt
    monkeypatch.setattr(train.Trainer, "save", crash_in_draw)
    args = ["--steps", "4", "--eval_every", "2", "--no_final_eval"]
    with pytest.raises(KeyboardInterrupt):
        run_standin(tmp_path / "a", *args)
    assert calls == ["warm", "draw"]
    monkeypatch.setattr(train.Trainer, "save", save)
    run_standin(tmp_path / "a", *args, "--resume")
    assert calls == ["warm", "draw"] and torch.load(tmp_path / "a" / "draw.pt", weights_only=True)["done"]
    train.load_model(str(tmp_path / "a" / "draw.pt"))
    run_standin(tmp_path / "b", *args, "--phase", "draw", "--init_from", str(tmp_path / "a" / "draw.pt"))
    assert calls == ["warm", "draw"]
    run_standin(tmp_path / "c", *args, "--phase", "draw", "--init_from", str(tmp_path / "a" / "warm.pt"))
    assert calls == ["warm", "draw", "draw"]
