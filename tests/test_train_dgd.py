"""Distribution Guided Distillation and the distillation loss (qvit/distill.py)."""

import copy

import pytest
import torch
import torch.nn.functional as F

from qvit.distill import DistillationLoss, DistillConfig, dgd_loss, record_qk, similarity
from qvit.models import create_model

TINY = dict(depth=2, embed_dim=32, num_heads=2)
SWIN = dict(
    img_size=16,
    patch_size=2,
    window_size=4,
    in_chans=1,
    num_classes=10,
    depths=(2, 2),
    num_heads=(2, 4),
    embed_dim=16,
)


def _qk(model, x):
    with record_qk(model) as store:
        model(x)
    return list(store)


def test_similarity_rows_are_unit_vectors():
    g = similarity(torch.randn(2, 3, 5, 4))
    assert g.shape == (2, 3, 5, 5)
    torch.testing.assert_close(g.norm(dim=-1), torch.ones(2, 3, 5))


def test_dgd_is_zero_for_identical_student_and_teacher_and_positive_otherwise():
    torch.manual_seed(0)
    x = torch.randn(3, 1, 28, 28)
    teacher = create_model("deit_tiny_patch4_28", **TINY).eval()
    same = copy.deepcopy(teacher)
    t = _qk(teacher, x)
    assert len(t) == 2 and t[0][0].shape == (3, 2, 50, 16)
    assert float(dgd_loss(_qk(same, x), t).detach()) == pytest.approx(0.0, abs=1e-5)
    student = create_model("qvit_deit_tiny_patch4_28", bits=2, **TINY)
    student.load_state_dict(teacher.state_dict(), strict=False)
    student.eval()
    assert float(dgd_loss(_qk(student, x), t).detach()) > 0.1


def test_dgd_gradient_reaches_irm_and_qkv():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 28, 28)
    teacher = create_model("deit_tiny_patch4_28", **TINY).eval()
    student = create_model("qvit_deit_tiny_patch4_28", bits=3, **TINY)
    student(x)
    loss = dgd_loss(_qk(student, x), _qk(teacher, x))
    loss.backward()
    attn = student.blocks[1].attn
    for p in (
        attn.norm_q.weight,
        attn.norm_k.bias,
        attn.qkv.weight,
        attn.qkv.w_quant.step,
        attn.qkv.a_quant.step,
    ):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_dgd_on_swin_windows():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 16, 16)
    teacher = create_model("swin_tiny_patch2_window7_28", **SWIN).eval()
    student = create_model("qvit_swin_tiny_patch2_window7_28", bits=2, **SWIN)
    student.load_state_dict(teacher.state_dict(), strict=False)
    s, t = _qk(student, x), _qk(teacher, x)
    assert len(s) == len(t) == 4 and s[0][0].shape == t[0][0].shape == (
        8,
        2,
        16,
        8,
    )  # 2 images x 4 windows, head_dim 8
    assert float(dgd_loss(s, t).detach()) > 0


def test_hard_distillation_is_half_labels_half_teacher_argmax():
    torch.manual_seed(0)
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    teacher = create_model("deit_tiny_patch4_28", **TINY)
    student = create_model("qvit_deit_tiny_distilled_patch4_28", bits=4, **TINY)
    student.train()
    crit = DistillationLoss(DistillConfig("hard", alpha=0.5, dgd=0.0), teacher)
    torch.manual_seed(1)
    loss, parts = crit(student, x, y)
    torch.manual_seed(1)
    cls, dist = student(x)
    with torch.no_grad():
        t = teacher(x).argmax(-1)
    torch.testing.assert_close(loss, 0.5 * F.cross_entropy(cls, y) + 0.5 * F.cross_entropy(dist, t))
    assert "dgd" not in parts
    crit_dgd = DistillationLoss(DistillConfig("hard", alpha=0.5, dgd=1.0), teacher)
    loss_dgd, parts = crit_dgd(student, x, y)
    assert parts["dgd"] > 0 and float(loss_dgd) > float(loss)


def test_ablation_baseline_needs_no_teacher_and_dgd_needs_one():
    student = create_model("qvit_deit_tiny_patch4_28", bits=2, **TINY)
    loss, parts = DistillationLoss(DistillConfig("none", dgd=0.0))(
        student, torch.randn(2, 1, 28, 28), torch.tensor([1, 2])
    )
    assert set(parts) == {"logits", "ce"}
    with pytest.raises(ValueError):
        DistillationLoss(DistillConfig("none", dgd=1.0))


def test_soft_distillation_is_kl_at_temperature():
    torch.manual_seed(0)
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    teacher = create_model("deit_tiny_patch4_28", **TINY)
    student = create_model("qvit_deit_tiny_patch4_28", bits=4, **TINY).eval()
    loss, _ = DistillationLoss(DistillConfig("soft", alpha=0.3, tau=2.0, dgd=0.0), teacher)(student, x, y)
    with torch.no_grad():
        s, t = student(x), teacher(x)
    kl = F.kl_div(F.log_softmax(s / 2, -1), F.softmax(t / 2, -1), reduction="batchmean") * 4
    torch.testing.assert_close(loss.detach(), 0.7 * F.cross_entropy(s, y) + 0.3 * kl)


def test_dgd_mean_is_the_sum_per_row_distance_and_bounded():
    torch.manual_seed(0)
    B, H, N, d = 2, 3, 7, 4
    student = [(torch.randn(B, H, N, d), torch.randn(B, H, N, d)) for _ in range(2)]
    teacher = [(torch.randn(B, H, N, d), torch.randn(B, H, N, d)) for _ in range(2)]
    total = dgd_loss(student, teacher, "sum")
    mean = dgd_loss(student, teacher, "mean")
    # 2 layers x H heads x (q, k) Frobenius distances of N x N matrices, each divided by sqrt(N)
    torch.testing.assert_close(mean, total / (2 * H * 2 * N**0.5))
    assert 0 < float(mean) <= 2.0
    opposite = [(-q, -k) for q, k in student]  # G of -t is G of t: DGD only sees the similarity pattern
    assert float(dgd_loss(student, opposite, "mean")) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        dgd_loss(student, teacher, "max")


@pytest.mark.parametrize("stat", ["token", "head"])
def test_each_target_is_reachable_by_a_student_computing_the_teachers_q_k(stat):
    """A student whose q, k equal the teacher's: with an identity affine it matches both the
    rectified and the normalized target; once its affine is calibrated to reproduce q, k (as QAT
    starts) only the rectified target (the teacher through the same IRM, affine included) still
    is met, the normalized one (affine dropped) is not."""
    from qvit.attention import fit_irm, make_irm
    from qvit.distill import teacher_target

    torch.manual_seed(0)
    q = torch.randn(2, 3, 7, 4) * torch.tensor([3.0, 0.5, 1.0, 2.0]) + torch.tensor([1.0, -1.0, 0.0, 2.0])
    k = torch.randn(2, 3, 7, 4) * 0.5 - 2
    norm_q, norm_k = make_irm(stat, 3, 4, 1e-5), make_irm(stat, 3, 4, 1e-5)

    def dgd(target):
        student = [(norm_q(q), norm_k(k))]
        teacher = [(q, k)] if target is None else teacher_target([(q, k)], [(norm_q, norm_k)], target)
        return float(dgd_loss(student, teacher).detach())

    assert dgd("rectified") < 1e-5 and dgd("normalized") < 1e-5
    assert dgd(None) > 0.05  # the raw q, k it cannot match
    fit_irm(norm_q, q)
    fit_irm(norm_k, k)
    assert dgd("rectified") < 1e-5
    assert dgd("normalized") > 0.02
    out = teacher_target([(q, k)], [(norm_q, norm_k)], "rectified")[0][0]
    assert not out.requires_grad  # the target never trains the student's affine
    assert teacher_target([(q, k)], [None], "rectified")[0][0] is q  # no IRM: raw against raw
    assert teacher_target([(q, k)], [(norm_q, norm_k)], "raw")[0][0] is q
    with pytest.raises(ValueError, match="unknown DGD target"):
        teacher_target([(q, k)], [None], "teacher")


def test_dgd_point_quantized_records_the_operands_of_the_integer_matmul():
    torch.manual_seed(0)
    m = create_model("deit_tiny_patch4_28", bits=2, irm_stat="head", **TINY).train()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        m(x)  # quantizer init
    with torch.no_grad(), record_qk(m, "quantized") as store:
        m(x)
    q, _ = store[0]
    step = m.blocks[0].attn.q_act.step.view(1, -1, 1, 1)
    assert torch.allclose(q / step, torch.round(q / step), atol=1e-4)  # on the quantizer's grid
    assert len(torch.unique(torch.round(q / step))) <= 4  # 2 bits
    with pytest.raises(ValueError, match="unknown DGD point"):
        with record_qk(m, "after"):
            pass


def test_dgd_defaults_are_the_mean_and_the_normalized_target():
    cfg = DistillConfig()
    assert (cfg.dgd_reduce, cfg.dgd_target, cfg.dgd_point) == ("mean", "normalized", "rectified")


def test_qvit_train_offers_every_dgd_target_and_point():
    import argparse

    from qvit import cmd_train
    from qvit.distill import DGD_POINTS, DGD_TARGETS

    p = argparse.ArgumentParser()
    cmd_train.add_arguments(p)
    choices = {a.dest: a.choices for a in p._actions}
    assert tuple(choices["dgd_target"]) == DGD_TARGETS and tuple(choices["dgd_point"]) == DGD_POINTS
