"""Tests for bench.py (FLOP counting, MFU, the JSON report) and sample.py (answers, picture, errors)."""
import json
import re

import numpy as np
import pytest
import torch

import bench
import sample
import train
from data import world


def tiny(tmp_path):
    args, extra = bench.build_parser().parse_known_args(["--model", "llava", "--size", "tiny",
                                                         "--out_dir", str(tmp_path)])
    return bench.build("llava", args, extra)


def test_counted_flops_match_the_analytic_count(tmp_path):
    """A text-only batch runs the decoder alone: every matmul parameter costs 6 FLOPs a token
    (forward 2, backward 4) and attention 4*T*C a token a layer forward, 2.5 times that backward
    (FlopCounterMode's formulas, causal masking not discounted). The CPU attention kernel counts."""
    trainer, _ = tiny(tmp_path)
    B, T = 4, 32
    batch = bench.synthetic_batch(trainer, B, T, {})
    assert batch["tokens"].shape == (B, T) and batch["media"] == {}
    cfg = trainer.cfg
    C, H, L, V = cfg.n_embd, cfg.mlp_hidden, cfg.n_layer, cfg.vocab_size
    matmul_params = L * (4 * C * C + 3 * C * H) + C * V  # qkv, proj, gate_up, down; the tied head
    expected = 6 * matmul_params * B * T + 14 * L * B * T * T * C
    assert bench.count_flops(trainer.model, batch, trainer.ctx) == pytest.approx(expected, rel=0.02)
    assert all(p.grad is None for p in trainer.model.parameters())  # counting leaves no gradients behind


def test_synthetic_batch_has_placeholders_then_text(tmp_path):
    trainer, batch = tiny(tmp_path)
    P, tok = trainer.model.media_tokens["image"], trainer.tok
    assert batch["tokens"].shape == (4, P + 16) and batch["media"]["image"].shape == (4, 3, 24, 24)
    assert (batch["tokens"][:, :P] == tok.image).all() and (batch["tokens"][:, P:] >= len(tok.specials)).all()
    assert (batch["targets"][:, :P - 1] == -100).all() and (batch["targets"][:, P - 1:] >= len(tok.specials)).all()
    assert all(p.requires_grad for p in trainer.model.parameters())  # throughput trains everything


def test_bench_report(tmp_path, capsys):
    out = tmp_path / "bench.json"
    report = bench.main(["--model", "llava,flamingo", "--size", "tiny", "--steps", "2", "--warmup", "1",
                         "--json", str(out), "--out_dir", str(tmp_path)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    m, r = report["machine"], report["models"]["llava"]
    assert m["peak_flops"] > 0 and m["threads"] == 2 and m["torch"] == torch.__version__ and m["device_name"]
    assert 0 < r["mfu"] < 1.5
    assert r["mfu"] == pytest.approx(r["flops_per_step"] / r["step_s"] / m["peak_flops"])
    assert r["tokens_per_s"] == pytest.approx(r["batch"]["tokens"] / r["step_s"])
    assert r["flops_per_token"] == pytest.approx(r["flops_per_step"] / r["batch"]["tokens"])
    assert r["params"]["total"] == sum(r["params"]["groups"].values()) > 0
    assert r["forward_s"] > 0 and r["memory"]["bytes"] >= 0 and r["memory"]["kind"]
    assert "skipped" in report["models"]["flamingo"] or "mfu" in report["models"]["flamingo"]
    table = capsys.readouterr().out
    assert "| llava |" in table and "MFU" in table


def test_bench_rejects_bad_arguments(capsys):
    for argv, message in ((["--model", "llava", "--size", "huge"], "unknown --size"), (["--model", "gpt5"], "unknown model")):
        with pytest.raises(SystemExit) as e:
            bench.main(argv)
        assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """llava's last phase alone, 3 steps: enough for a checkpoint, not for right answers."""
    out = tmp_path_factory.mktemp("llava")
    train.main(["--model", "llava", "--phase", "instruct", "--steps", "3", "--batch_size", "8", "--eval_every", "3",
                "--eval_samples", "8", "--final_samples", "8", "--no_final_eval", "--out_dir", str(out)])
    return out / "instruct.pt"


def test_sample_answers_toy_questions(checkpoint, tmp_path, capsys):
    png = tmp_path / "samples.png"
    rows = sample.main([str(checkpoint), "--n", "3", "--out", str(png)])
    printed = capsys.readouterr().out
    assert len(rows) == 3 and all(r.truth for r in rows)  # instruct's task, vqa: with truths
    assert printed.count("model:") == 3 and printed.count("truth:") == 3 and "exact match" in printed
    assert all(r.score == float(r.reply == r.truth) for r in rows)  # vqa's judge is exact match
    assert png.stat().st_size > 0


def test_few_shot_prompts_put_solved_examples_first(checkpoint, tmp_path, capsys):
    """--shots k: each question follows k solved training samples (their media and answers), in one
    interleaved prompt; the question's own media come last and its truth is unchanged."""
    plain = sample.main([str(checkpoint), "--task", "vqa", "--n", "2", "--out", str(tmp_path / "a.png")])
    shot = sample.main([str(checkpoint), "--task", "vqa", "--n", "2", "--shots", "2", "--out", str(tmp_path / "b.png")])
    for p, s in zip(plain, shot):
        turns = s.prompt["conversations"]
        assert len(s.prompt["media"]) == 3 and len(turns) == 5 and s.truth == p.truth
        assert [t["from"] for t in turns] == ["human", "gpt", "human", "gpt", "human"] and turns[-1] == p.prompt["conversations"][-1]
        assert np.array_equal(s.prompt["media"][-1]["data"], p.prompt["media"][0]["data"])
    assert shot[0].prompt["media"][0]["data"].tobytes() != shot[1].prompt["media"][0]["data"].tobytes()  # own examples
    assert "exact match" in capsys.readouterr().out


def test_sample_by_shapes_counts_every_question_once(checkpoint, tmp_path, capsys):
    """--by_shapes splits exact match by question kind and shapes in the image; the cells add up to n,
    only the first 16 samples are printed one by one, and the counts are the analyser's."""
    rows = sample.main([str(checkpoint), "--task", "vqa", "--n", "40", "--by_shapes", "--out", str(tmp_path / "s.png")])
    printed = capsys.readouterr().out
    cells = re.findall(r"(\d) shapes? (\d+)/(\d+) = ", printed)
    assert sum(int(n) for _, _, n in cells) == 40 and printed.count("model:") == 16 and "and 24 more" in printed
    assert sum(int(k) for _, k, _ in cells) == sum(r.truth == r.reply for r in rows)
    shapes = {len(world.analyse_image(r.prompt["media"][0]["data"])) for r in rows}
    assert {int(s) for s, _, _ in cells} == shapes


def test_by_shapes_counts_answers_that_name_another_shape(capsys):
    """A wrong answer is a binding failure when it is another shape's fact, not when it is no shape's."""
    scene = (world.Obj(0, "red", "circle", "large"), world.Obj(8, "blue", "square", "large"))
    img = world.render_scene(scene, np.random.default_rng(0))
    ask = {"kind": "position", "task": "vqa", "media": [{"type": "image", "data": img}]}
    rows = [sample.Row(ask, "top left", reply, {}, None) for reply in ("bottom right", "center", "top left")]
    sample.by_shapes(rows)
    printed = capsys.readouterr().out
    assert "position: 2 shapes 1/3 = 0.333  | wrong but another shape's: 1/2" in printed
    assert "commonest mistakes (truth -> reply): top left -> bottom right x1, top left -> center x1" in printed


def test_sample_answers_a_user_image(checkpoint, tmp_path, capsys):
    from PIL import Image
    Image.new("RGB", (40, 30), "red").save(tmp_path / "mine.png")
    rows = sample.main([str(checkpoint), "--image", str(tmp_path / "mine.png"), "--prompt", "what colour is it?",
                        "--temperature", "1", "--top_k", "3", "--out", str(tmp_path / "mine_out.png")])
    (row,) = rows
    assert row.truth is None and row.prompt["conversations"][0]["value"] == "<image> what colour is it?"
    assert row.prompt["media"][0]["data"].shape == (64, 64, 3) and (tmp_path / "mine_out.png").exists()


@pytest.mark.parametrize("argv, message", [
    (["missing.pt"], "not found"),
    (["{other}"], "is not a checkpoint written by train.py"),
    (["{ck}", "--image", "missing.png", "--prompt", "hi"], "no such file"),
    (["{ck}", "--image", "{bad}", "--prompt", "hi"], "cannot read --image"),
    (["{ck}", "--image", "{bad}"], "--prompt is needed"),
    (["{ck}", "--task", "speech", "--split", "compose"], "cannot ask 'speech' questions"),
    (["{ck}", "--task", "audio_qa"], "takes no audio"),
])
def test_sample_errors_are_messages(checkpoint, tmp_path, argv, message, capsys):
    """One line on stderr and exit code 2, no traceback."""
    (tmp_path / "bad.png").write_text("not an image")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    argv = [a.format(ck=checkpoint, bad=tmp_path / "bad.png", other=tmp_path / "other.pt") for a in argv] + ["--out", str(tmp_path / "x.png")]
    with pytest.raises(SystemExit) as e:
        sample.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err, err


def test_sample_draws_the_generated_media_beside_the_prompt():
    """sample.py's picture shows what the model drew after the prompt's own media (as uint8 images)."""
    prompt = {"media": [{"type": "image", "data": np.zeros((64, 64, 3), np.uint8)}]}
    drawn = torch.full((1, 3, 16, 16), 0.5)
    shown = sample.generated(prompt, {"image": drawn})["media"]
    assert [m["type"] for m in shown] == ["image", "image"] and shown[1]["data"].shape == (64, 64, 3)
    assert shown[1]["data"].dtype == np.uint8 and (shown[1]["data"] == 128).all()


def test_sample_shows_what_a_drawing_model_drew(tmp_path, monkeypatch):
    """End to end on the stand-in (which draws 4-code images): sample.py judges the drawn images
    with the task's judge and writes the picture."""
    import standin  # tests/ is on the path
    monkeypatch.setitem(train.MODELS, "standin", "standin")
    train.main(["--model", "standin", "--phase", "draw", "--steps", "2", "--no_final_eval", "--eval_samples", "2",
                "--out_dir", str(tmp_path)])
    def draws(self, tokens, *args):  # a fixed, well-formed drawing: <boi> 4 codes <eoi> <eos>
        c = self.cfg
        return torch.tensor([[c.boi_id, *[c.vocab_size + k for k in (0, 1, 2, 3)], c.eoi_id, c.eos_id]] * len(tokens))
    monkeypatch.setattr(standin.Model, "generate", draws)
    rows = sample.main([str(tmp_path / "draw.pt"), "--task", "text_to_image", "--n", "2", "--out", str(tmp_path / "d.png")])
    assert [r.reply for r in rows] == ["<image>"] * 2 and all(r.made["image"].shape == (1, 3, 16, 16) for r in rows)
    assert all(r.score == 0 for r in rows) and (tmp_path / "d.png").stat().st_size > 0  # 4 grey blocks: no scene
