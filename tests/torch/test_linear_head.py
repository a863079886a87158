"""The fused linear head against the composite (linear layer + loss), in chunks, with sparse targets, and sharded
over 2 processes (gloo)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from helpers import assert_close

import softmargin.torch as st

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support")


def _problem(dtype=torch.float64, n=23, h=12, c=3000, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen, dtype=dtype)
    weight = torch.randn(c, h, generator=gen, dtype=dtype) * 0.5
    bias = torch.randn(c, generator=gen, dtype=dtype)
    target = (torch.rand(n, c, generator=gen) < 0.01).to(dtype)
    return hidden, weight, bias, target


def _grads(loss_fn, tensors, grad_output):
    tensors = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = loss_fn(*tensors)
    grads = torch.autograd.grad((out * grad_output).sum(), tensors)
    return out.detach(), grads


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("chunking", [dict(chunk_size=700), dict(chunk_size=3000), dict(memory_budget=16 * 23 * 50)])
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("options", [{}, dict(class_weight="c", pos_weight="c", gamma_neg=2.0, clip=0.05, label_smoothing=0.1)])
def test_head_equals_linear_plus_loss(reduction, chunking, sparse, options):
    hidden, weight, bias, target = _problem()
    per_label = torch.rand(weight.shape[0], dtype=torch.float64) + 0.5
    kw = {k: (per_label if v == "c" else v) for k, v in options.items()}
    loss_kw = {("weight" if k == "class_weight" else k): v for k, v in kw.items()}
    grad_output = torch.rand(hidden.shape[0], dtype=torch.float64) if reduction == "none" else torch.tensor(1.7, dtype=torch.float64)
    tgt = target.to_sparse_csr() if sparse else target
    ours = _grads(lambda h, w, b: st.linear_multilabel_soft_margin_loss(h, w, b, tgt, reduction=reduction, **chunking, **kw), (hidden, weight, bias), grad_output)
    ref = _grads(lambda h, w, b: st.multilabel_soft_margin_loss(h @ w.T + b, target, reduction=reduction, **loss_kw), (hidden, weight, bias), grad_output)
    assert_close(ours[0].numpy(), ref[0].numpy(), 1e-12, "loss")
    for name, a, b in zip(("hidden", "weight", "bias"), ours[1], ref[1]):
        assert_close(a.numpy(), b.numpy(), 1e-11, name)


def test_float32_head_and_no_bias():
    hidden, weight, _, target = _problem(torch.float32)
    ours = _grads(lambda h, w: st.linear_multilabel_soft_margin_loss(h, w, None, target, chunk_size=512), (hidden, weight), 1.0)
    ref = _grads(lambda h, w: st.multilabel_soft_margin_loss(h @ w.T, target), (hidden, weight), 1.0)
    assert_close(ours[0].numpy(), ref[0].numpy(), 1e-6)
    for a, b in zip(ours[1], ref[1]):
        assert_close(a.numpy(), b.numpy(), 2e-6)


def test_gradcheck_small():
    hidden, weight, bias, target = _problem(n=3, h=4, c=9)
    args = [t.requires_grad_(True) for t in (hidden, weight, bias)]
    assert torch.autograd.gradcheck(lambda h, w, b: st.linear_multilabel_soft_margin_loss(h, w, b, target, chunk_size=4), args)


def test_module_trains_an_encoder_and_topk_is_exact():
    torch.manual_seed(0)
    encoder = torch.nn.Linear(10, 12)
    head = st.LinearMultiLabelSoftMarginLoss(12, 2000, chunk_size=300)
    x = torch.randn(40, 10)
    targets = [list(np.random.default_rng(i).choice(2000, 3, replace=False)) for i in range(40)]
    loss = head(encoder(x), targets)
    loss.backward()
    assert encoder.weight.grad is not None and encoder.weight.grad.abs().sum() > 0
    scores, ids = head.topk(encoder(x), 5)
    full = head.logits(encoder(x))
    torch.testing.assert_close(scores, full.topk(5, dim=1).values)
    assert torch.equal(full.gather(1, ids), scores)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_under_autocast_a_bfloat16_hidden_and_float32_weights_train(reduction):
    """An autocast encoder hands the head bfloat16 features, its parameters are float32. "none" (whose backward walks
    the chunks again, outside the autocast region) failed in backward with "mat1 and mat2 must have the same dtype";
    now its gradients are forward's for "mean" (the same walk under autocast), and both those of the unfused loss."""
    hidden, weight, bias, target = _problem(torch.float32, c=700)
    hidden = hidden.bfloat16()
    grad_output = torch.full((hidden.shape[0],), 1.0 / hidden.shape[0]) if reduction == "none" else torch.tensor(1.0)

    def grads(loss_fn, grad_output):
        tensors = [t.detach().clone().requires_grad_(True) for t in (hidden, weight, bias)]
        with torch.autocast("cpu", dtype=torch.bfloat16):  # forward under autocast, backward outside, as recommended
            out = loss_fn(*tensors)
        return torch.autograd.grad((out * grad_output).sum(), tensors)

    ours = grads(lambda h, w, b: st.linear_multilabel_soft_margin_loss(h, w, b, target, reduction=reduction, chunk_size=256), grad_output)
    ref = grads(lambda h, w, b: st.multilabel_soft_margin_loss(h @ w.T + b, target, reduction=reduction), grad_output)
    mean = grads(lambda h, w, b: st.linear_multilabel_soft_margin_loss(h, w, b, target, chunk_size=256), 1.0)
    for name, a, b, m in zip(("hidden", "weight", "bias"), ours, ref, mean):
        assert a.dtype == b.dtype, name
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-3, msg=name)
        torch.testing.assert_close(a, m, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_meta_device_shapes(reduction):
    """Shapes only (validate=False: there are no values to check): the autocast state read for the backward walk must
    not fail for a device autocast does not know."""
    hidden = torch.empty(4, 3, device="meta", requires_grad=True)
    weight = torch.empty(6, 3, device="meta", requires_grad=True)
    loss = st.linear_multilabel_soft_margin_loss(hidden, weight, None, torch.empty(4, 6, device="meta"), reduction=reduction, validate=False)
    loss.sum().backward()
    assert hidden.grad.shape == (4, 3) and weight.grad.shape == (6, 3) and hidden.grad.device.type == "meta"


def test_value_checks_off_the_cpu_read_nothing_back():
    """validate=True off the CPU checks the target, class_weight and pos_weight as the loss does, by assertions on
    the device: the head read two values back per tensor (a host synchronisation each on a GPU), and on the meta
    device failed with "Tensor.item() cannot be called on meta tensors". The meta device stands in for a GPU here."""
    from torch.utils._python_dispatch import TorchDispatchMode

    reads = []

    class CountReads(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default):
                reads.append(func)
            return func(*args, **(kwargs or {}))

    hidden = torch.empty(4, 3, device="meta", requires_grad=True)
    weight = torch.empty(6, 3, device="meta", requires_grad=True)
    per_label = torch.empty(6, device="meta")
    with CountReads():
        loss = st.linear_multilabel_soft_margin_loss(
            hidden, weight, None, torch.empty(4, 6, device="meta"), class_weight=per_label, pos_weight=per_label
        )
        loss.backward()
    assert reads == [] and hidden.grad.shape == (4, 3) and weight.grad.device.type == "meta"


def test_fake_tensor_mode_with_the_default_value_checks():
    """Under FakeTensorMode (memory estimates, non-strict export) the head failed with DataDependentOutputException
    unless validate=False: its value checks read values back; fake tensors have none to check."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        hidden = torch.randn(4, 3, requires_grad=True)
        weight = torch.randn(6, 3, requires_grad=True)
        loss = st.LinearMultiLabelSoftMarginLoss(3, 6, pos_weight=torch.ones(6))(hidden, torch.ones(4, 6))
        loss.backward()
        assert loss.shape == () and hidden.grad.shape == (4, 3)
        loss = st.linear_multilabel_soft_margin_loss(hidden, weight, None, torch.ones(4, 6), class_weight=torch.ones(6))
        assert loss.shape == ()
    hidden = torch.randn(4, 3)  # outside it, a real target is still checked
    with pytest.raises(ValueError, match="target"):
        st.linear_multilabel_soft_margin_loss(hidden, torch.randn(6, 3), None, torch.full((4, 6), 2.0))


def test_topk_refuses_a_negative_k_by_name_and_serves_an_empty_shard():
    head = st.LinearMultiLabelSoftMarginLoss(3, 5)
    hidden = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"k=-1: expected a non-negative integer"):  # torch's "selected index k out of range"
        head.topk(hidden, -1)
    with pytest.raises(ValueError, match=r"k=2.0: expected a non-negative integer"):
        head.topk(hidden, 2.0)
    assert head.topk(hidden, 0)[1].shape == (4, 0)
    with pytest.warns(UserWarning, match="zero-element"):  # torch.nn.Linear's init says so
        empty = st.LinearMultiLabelSoftMarginLoss(3, 0)
    scores, ids = empty.topk(hidden, 3)  # an AssertionError before
    assert scores.shape == ids.shape == (4, 0) and ids.dtype == torch.int64


def test_bad_shapes():
    hidden, weight, bias, target = _problem(n=4, h=3, c=5)
    with pytest.raises(ValueError, match=r"expected \(N, H\) and \(C, H\)"):
        st.linear_multilabel_soft_margin_loss(hidden, weight[:, :2], bias, target)
    with pytest.raises(ValueError, match=r"bias\.shape == \(4,\), expected \(5,\)"):
        st.linear_multilabel_soft_margin_loss(hidden, weight, bias[:4], target)
    with pytest.raises(ValueError, match=r"target\.shape == \(4, 4\), expected input\.shape == \(4, 5\)"):
        st.linear_multilabel_soft_margin_loss(hidden, weight, bias, target[:, :4])



@pytest.mark.parametrize("change,error,message", [
    # torch's own "mat1 and mat2 must have the same dtype, but got BFloat16 and Float" named neither argument
    (dict(hidden=torch.bfloat16), TypeError, r"different dtypes \(hidden bfloat16, weight float32, bias float32\): expected one dtype"),
    (dict(bias=torch.float64), TypeError, r"different dtypes \(hidden float32, weight float32, bias float64\)"),
    (dict(bias=[0.0] * 5), TypeError, r"bias is a list: expected a torch.Tensor of shape \(5,\) or None"),
    (dict(class_weight=[1.0] * 5), TypeError, r"class_weight is a list: expected a torch.Tensor"),
    (dict(target=np.zeros((4, 5))), TypeError, r"target is a ndarray: expected a torch.Tensor, sparse positives or label lists"),
    # silently one label per chunk, or the smallest chunks
    (dict(chunk_size=0), ValueError, r"chunk_size=0: expected a positive integer, or None for the default"),
    (dict(chunk_size=-1), ValueError, r"chunk_size=-1: expected a positive integer"),
    (dict(chunk_size=2.5), ValueError, r"chunk_size=2.5: expected a positive integer"),
    (dict(memory_budget=0), ValueError, r"memory_budget=0: expected a positive integer"),
    # silently divided the loss by 3 labels instead of 5 (twice the loss)
    (dict(total_labels=3), ValueError, r"total_labels=3: expected 5 \(weight.shape\[0\]\) without a process_group"),
])  # fmt: skip
def test_bad_arguments_are_refused_by_name(change, error, message):
    hidden, weight, bias, target = _problem(torch.float32, n=4, h=3, c=5)
    args = dict(hidden=hidden, weight=weight, bias=bias, target=target)
    for name, value in change.items():
        if name in args:
            args[name] = args[name].to(value) if isinstance(value, torch.dtype) else value
    keywords = {name: value for name, value in change.items() if name not in args}
    with pytest.raises(error, match=message):
        st.linear_multilabel_soft_margin_loss(args["hidden"], args["weight"], args["bias"], args["target"], **keywords)


def test_integer_sizes_of_any_kind_are_taken():
    hidden, weight, bias, target = _problem(torch.float32, n=4, h=3, c=5)
    expected = st.linear_multilabel_soft_margin_loss(hidden, weight, bias, target)
    ours = st.linear_multilabel_soft_margin_loss(hidden, weight, bias, target, chunk_size=np.int64(2), total_labels=np.int64(5))
    torch.testing.assert_close(ours, expected)
    with pytest.raises(ValueError, match=r"chunk_size=0: expected a positive integer"):
        st.LinearMultiLabelSoftMarginLoss(3, 5, chunk_size=0)

@pytest.mark.parametrize("name", ["target", "class_weight", "pos_weight"])
def test_an_operand_it_cannot_differentiate_is_refused_not_left_without_grad(name):
    # their .grad would silently stay None, where the unfused loss gives target and class_weight gradients
    hidden, weight, bias, target = _problem(n=4, h=3, c=5)
    operands = {"target": target, "class_weight": torch.rand(5) + 0.5, "pos_weight": torch.rand(5) + 0.5}
    operands[name] = operands[name].clone().requires_grad_()
    call = lambda: st.linear_multilabel_soft_margin_loss(hidden, weight, bias, operands["target"],
                                                        class_weight=operands["class_weight"], pos_weight=operands["pos_weight"])  # fmt: skip
    with pytest.raises(ValueError, match=rf"{name} requires grad, but the fused linear head differentiates hidden, weight and bias only"):
        call()
    with torch.no_grad():  # nothing to differentiate: fine
        call()


def test_torch_func_transforms_are_refused_by_name():
    from torch.func import grad

    hidden, weight, bias, target = _problem(n=4, h=3, c=5)
    with pytest.raises(RuntimeError, match=r"differentiated by torch.autograd .* not by torch.func transforms"):
        grad(lambda w: st.linear_multilabel_soft_margin_loss(hidden, w, bias, target))(weight)
    with pytest.raises(RuntimeError, match=r"differentiated by torch.autograd .* not by torch.func transforms"):
        torch.func.vmap(lambda t: st.linear_multilabel_soft_margin_loss(hidden, weight, bias, t))(torch.stack([target, target]))


def test_second_derivatives_are_refused_by_name():
    hidden, weight, bias, target = _problem(n=4, h=3, c=5)
    hidden = hidden.clone().requires_grad_()
    loss = st.linear_multilabel_soft_margin_loss(hidden, weight, bias, target)
    with pytest.raises(RuntimeError, match=r"second derivatives through the fused linear head are not available"):
        torch.autograd.grad(loss, hidden, create_graph=True)


def _run_ranks(tmp_path: Path, mode: str, timeout: float = 120) -> list[subprocess.CompletedProcess]:
    worker = Path(__file__).with_name("distributed_worker.py")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    procs = [
        subprocess.Popen([sys.executable, str(worker), str(rank), "2", str(tmp_path / "init"), str(tmp_path / f"rank{rank}.pt"), mode],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for rank in range(2)
    ]  # fmt: skip
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail(f"a rank hung past {timeout} s")
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


@pytest.mark.slow
def test_two_process_label_parallel_equals_one_process(tmp_path):
    results = _run_ranks(tmp_path, "ok")
    assert all(r.returncode == 0 for r in results), [r.stderr[-2000:] for r in results]
    shards = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    torch.manual_seed(0)  # the same problem, in one process
    hidden = torch.randn(16, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(1000, 8, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(1000, dtype=torch.float64, requires_grad=True)
    target = (torch.rand(16, 1000) < 0.02).double()
    loss = st.multilabel_soft_margin_loss(hidden @ weight.T + bias, target)
    loss.backward()
    for shard in shards:
        assert_close(shard["loss"].numpy(), loss.detach().numpy(), 1e-12, "loss")
        assert_close(shard["hidden"].numpy(), hidden.grad.numpy(), 1e-12, "d hidden")
        lo, hi = shard["shard"]
        assert_close(shard["weight"].numpy(), weight.grad[lo:hi].numpy(), 1e-12, "d weight")
        assert_close(shard["bias"].numpy(), bias.grad[lo:hi].numpy(), 1e-12, "d bias")


@pytest.mark.slow
def test_a_failing_process_does_not_hang_the_other(tmp_path):
    started = time.monotonic()
    results = _run_ranks(tmp_path, "fail", timeout=90)
    assert results[1].returncode != 0 and "rank 1 fails" in results[1].stderr
    assert results[0].returncode != 0, "rank 0 should have failed, not finished alone"
    assert "label-parallel all-reduce failed" in results[0].stderr or "Connection" in results[0].stderr
    assert time.monotonic() - started < 90


def test_the_label_count_is_reduced_on_a_device_the_backend_serves(monkeypatch):
    # NCCL reduces CUDA tensors only: a CPU count there fails ("No backend type associated with device type cpu").
    from softmargin.torch import _count_device

    dist = pytest.importorskip("torch.distributed")
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    assert _count_device(object()) == "cuda"
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "gloo")
    assert _count_device(object()) == "cpu"


def test_trainers_fused_head_gives_the_plain_loss():
    from softmargin.app.train import MultiLabelNet
    from softmargin.torch import MultiLabelSoftMarginLoss

    torch.manual_seed(0)
    net = MultiLabelNet(20, 700, hidden=(32,))
    x = torch.randn(16, 20)
    y = (torch.rand(16, 700) < 0.05).float()
    loss_fn = MultiLabelSoftMarginLoss(weight=torch.rand(700) + 0.5, gamma_neg=2.0, clip=0.05)
    grads = []
    for fused in (False, True):
        net.zero_grad()
        loss = net.loss(x, y, loss_fn, fused)
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in net.parameters()]))
    assert abs(grads[0][0] - grads[1][0]) < 1e-6
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


MULAN = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mulan"


@pytest.mark.slow
@pytest.mark.skipif(not (MULAN / "delicious").exists(), reason="../shared/data/mulan is not on this machine")
def test_trainer_learns_delicious_through_the_fused_head(monkeypatch):
    from softmargin.app import data as D
    from softmargin.app import train as T

    calls = []
    fused = T.linear_multilabel_soft_margin_loss
    monkeypatch.setattr(T, "linear_multilabel_soft_margin_loss", lambda *a, **k: calls.append(1) or fused(*a, **k))
    train = D.load_arff(MULAN / "delicious" / "delicious-train.arff")
    test = D.load_arff(MULAN / "delicious" / "delicious-test.arff")
    # model="mlp": on bag-of-words data "auto" now trains the linear model by truncated Newton (no fused head)
    config = T.TrainConfig(model="mlp", ensemble=1, epochs=2, valid_fraction=0, batch_size=256)
    model = T.fit(train, config, progress=False)
    metrics, _ = T.evaluate(model, test)
    assert calls, "983 labels: head='auto' should have used the fused head"
    popular = np.argsort(-train.Y.sum(0))[:5]
    assert metrics["P@1"] > test.Y[:, popular[0]].mean() + 0.03  # better than always the most popular tag
    assert metrics["P@5"] > test.Y[:, popular].mean() + 0.02
    assert 0 < metrics["PSP@5"] <= 1 and 0 < metrics["nDCG@5"] <= 1


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("options", [{}, {"pos_weight": "yes", "gamma_neg": 2.0, "clip": 0.05}])
def test_triton_backend_matches_the_cpu_kernel(sparse, options, monkeypatch):
    """The head's chunks through the Triton kernel (logits written over by their gradient; sparse positives read
    from the whole CSR target with an origin, never sliced), under the interpreter on CPU tensors."""
    import os

    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs Triton's interpreter (TRITON_INTERPRET=1)")
    from softmargin.kernels import cpu

    if cpu.kernel() is None:
        pytest.skip("no CPU kernel library here (SOFTMARGIN_NATIVE=0 or none built)")
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    weight = torch.randn(40, 4, generator=gen, dtype=torch.float64)
    bias = torch.randn(40, generator=gen, dtype=torch.float64)
    dense = (torch.rand(6, 40, generator=gen) < 0.2).double()
    target = [row.nonzero().flatten().tolist() for row in dense] if sparse else dense
    kwargs = {k: (torch.rand(40, generator=gen, dtype=torch.float64) + 0.5 if v == "yes" else v) for k, v in options.items()}
    results = []
    for backend in ("cpu", "triton"):
        monkeypatch.setenv("SOFTMARGIN_BACKEND", backend)
        params = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
        loss = st.linear_multilabel_soft_margin_loss(*params, target, chunk_size=16, **kwargs)
        loss.backward()
        results.append((loss.detach(), *(p.grad for p in params)))
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)


def test_triton_head_reads_float32_sparse_values_of_half_logits_unrounded(monkeypatch):
    """float32 soft values of a sparse target go to the Triton kernel as they are with float16 logits, as a dense
    float32 target does (both read in float32): the head gives the dense target's results. Converted to hidden's
    dtype first (as before), the values lost 13 of their 24 bits and hidden's gradient moved by up to 2e-3 relative."""
    import os

    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs Triton's interpreter (TRITON_INTERPRET=1)")
    monkeypatch.setenv("SOFTMARGIN_BACKEND", "triton")
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(6, 4, generator=gen).half()
    weight = (torch.randn(40, 4, generator=gen) * 0.5).half()
    dense = torch.where(torch.rand(6, 40, generator=gen) < 0.2, torch.rand(6, 40, generator=gen) * 0.8 + 0.1, 0.0)
    results = []
    for target in (dense, dense.to_sparse_csr()):
        params = [t.clone().requires_grad_() for t in (hidden, weight)]
        loss = st.linear_multilabel_soft_margin_loss(*params, None, target, chunk_size=16)
        loss.backward()
        results.append((loss.detach().float(), *(p.grad for p in params)))
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=0)
    assert torch.equal(results[0][1], results[1][1]), "hidden's gradient: the same float32 arithmetic, rounded once"


@pytest.mark.parametrize("hidden_dtype,target_dtype,class_weight_dtype", [
    (torch.bfloat16, torch.float32, None), (torch.float32, torch.float64, None),
    (torch.float32, torch.float32, torch.float64), (torch.float32, torch.bool, None), (torch.float64, torch.float32, None),
])  # fmt: skip
def test_result_dtype_is_the_plain_paths(hidden_dtype, target_dtype, class_weight_dtype):
    """The head's loss takes the dtype multilabel_soft_margin_loss gives on the logits (it returned hidden's: a
    bfloat16 loss, 0.7656 where the plain path gives 0.7637 in float32, for a float32 target)."""
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(6, 5, generator=gen).to(hidden_dtype).requires_grad_()
    weight = torch.randn(7, 5, generator=gen).to(hidden_dtype).requires_grad_()
    bias = torch.randn(7, generator=gen).to(hidden_dtype)
    target = (torch.rand(6, 7, generator=gen) < 0.4).to(target_dtype)
    class_weight = None if class_weight_dtype is None else (torch.rand(7, generator=gen) + 0.5).to(class_weight_dtype)
    ours = st.linear_multilabel_soft_margin_loss(hidden, weight, bias, target, class_weight=class_weight)
    plain = st.multilabel_soft_margin_loss(hidden @ weight.T + bias, target, class_weight)
    assert ours.dtype == plain.dtype
    tolerance = 2e-3 if hidden_dtype == torch.bfloat16 else 1e-6  # the plain path rounds its logits to bfloat16
    torch.testing.assert_close(ours, plain, rtol=tolerance, atol=tolerance)
    ours.backward()
    assert hidden.grad.dtype == hidden_dtype and weight.grad.dtype == hidden_dtype


@pytest.mark.parametrize("name", ["weight", "bias", "target", "class_weight", "pos_weight"])
def test_an_operand_on_another_device_than_hidden_is_refused_by_name(name):
    """A meta weight gave a loss of 9e26 (its logits read from garbage), a meta target, class_weight or pos_weight
    failed with "Tensor.item() cannot be called on meta tensors": refused by name."""
    hidden, weight, bias, target = _problem(torch.float32, n=4, h=3, c=5)
    operands = dict(weight=weight, bias=bias, target=target, class_weight=torch.ones(5), pos_weight=torch.ones(5))
    operands[name] = operands[name].to("meta")
    with pytest.raises(ValueError, match=rf"{name}\.device == meta, expected hidden\.device == cpu: every operand must be on the hidden's device"):
        st.linear_multilabel_soft_margin_loss(hidden, operands["weight"], operands["bias"], operands["target"],
                                              class_weight=operands["class_weight"], pos_weight=operands["pos_weight"])  # fmt: skip
    if name in ("class_weight", "pos_weight"):
        head = st.LinearMultiLabelSoftMarginLoss(3, 5, **{name: operands[name]})
        with pytest.raises(ValueError, match=rf"{name}\.device == meta, expected hidden\.device == cpu.*module\.to\(device\)"):
            head(hidden, target)


def test_options_assigned_to_the_head_are_checked_and_used():
    """``head.label_smoothing = 0.1`` set a plain attribute that forward never read (the loss stayed the plain one):
    now it is checked as the constructor checks it and used."""
    hidden, _, _, target = _problem(torch.float64, n=6, h=3, c=5)
    head = st.LinearMultiLabelSoftMarginLoss(3, 5, dtype=torch.float64)
    head.label_smoothing = 0.1
    logits = torch.nn.functional.linear(hidden, head.weight, head.bias).detach()
    smoothed = target * 0.9 + 0.05  # torch's own BCE on the smoothed targets
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, smoothed, reduction="none").mean(-1).mean()
    torch.testing.assert_close(head(hidden, target).detach(), expected, rtol=1e-12, atol=0)
    assert head.options == st.LossOptions(label_smoothing=0.1)
    with pytest.raises(ValueError, match=r"clip=1\.5 is outside \[0, 1\)"):
        head.clip = 1.5
    assert head.options == st.LossOptions(label_smoothing=0.1)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_a_chunk_sum_beyond_float32_is_the_loss_on_the_full_logits(reduction):
    """The head turned each chunk's per-row mean back into a sum in float32 before adding it to its float64 row sums:
    100 labels weighted 1e37 gave inf where the loss on the full logits is 7.0e36 (a sample's mean fits float32, its
    label sum does not)."""
    gen = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(2, 8, generator=gen), torch.randn(100, 8, generator=gen) * 0.1
    target = (torch.rand(2, 100, generator=gen) < 0.3).float()
    class_weight = torch.full((100,), 1e37)
    ours = st.linear_multilabel_soft_margin_loss(hidden, weight, None, target, class_weight=class_weight, reduction=reduction)
    expected = st.multilabel_soft_margin_loss(hidden @ weight.T, target, class_weight, reduction=reduction)
    assert torch.isfinite(expected).all()
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=0)
