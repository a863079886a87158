"""The eager fast path of the plain loss (``_ops._PlainLoss``: the kernel library reduces over the batch and scales
the gradient in backward) against the operator's path, bitwise, and against torch's loss; the calls it must decline
or hand to the general path; its kernel calls through the ``_fastcall`` extension and through ctypes alike."""

from __future__ import annotations

import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
from helpers import incoming_gradient, passthrough_mode

import softmargin.torch as st
from softmargin.kernels import cpu

pytestmark = pytest.mark.skipif(cpu.kernel() is None, reason="no CPU kernel library here")




def _problem(n, c, dtype, target, weight, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=gen, dtype=torch.float64) * torch.exp(2 * torch.randn(n, c, generator=gen, dtype=torch.float64))
    x = x.to(dtype)
    hard = torch.rand(n, c, generator=gen) < 0.3
    soft = torch.rand(n, c, generator=gen)
    y = {
        "same": hard.to(dtype), "bool": hard, "uint8": hard.to(torch.uint8), "soft": soft.to(dtype),
        "float32": hard.float(), "soft float32": soft,  # a half input's float32 target, read as it is
    }[target]  # fmt: skip
    w = torch.rand(c, generator=gen).to(dtype) * 2 if weight else None
    return x, y, w


def _run(x, y, w, reduction, grad_output, through_operator):
    xi = x.clone().requires_grad_()
    if through_operator:
        with passthrough_mode() as mode:
            loss = st.multilabel_soft_margin_loss(xi, y, w, reduction=reduction)
            (grad,) = torch.autograd.grad(loss, xi, incoming_gradient(grad_output, loss))
        assert "softmargin.loss_rows.default" in mode.seen
    else:
        loss = st.multilabel_soft_margin_loss(xi, y, w, reduction=reduction)
        assert type(loss.grad_fn).__name__ == "_PlainLossBackward"
        (grad,) = torch.autograd.grad(loss, xi, incoming_gradient(grad_output, loss))
    return loss.detach(), grad


DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
# the last four reach past the kernel's stack buffers (256 rows, 256 classes): the full matrix runs with the slow tests
SHAPES = [(1, 1), (32, 10), (64, 80), *(pytest.param(s, marks=pytest.mark.slow) for s in [(3, 300), (257, 3), (600, 7), (5, 2000)])]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    ("dtype", "target"),
    [
        *((dtype, target) for dtype in DTYPES for target in ("same", "bool", "uint8", "soft")),
        # a half input's float32 target (mixed precision's usual pair)
        *((dtype, target) for dtype in (torch.bfloat16, torch.float16) for target in ("float32", "soft float32")),
    ],
)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_plain_path_and_operator_agree_bitwise(shape, dtype, target, reduction):
    x, y, w = _problem(*shape, dtype, target, weight=shape[0] % 2 == 1 or shape == (32, 10), seed=sum(shape))
    for grad_output in (1.0, -2.7182818, 1e-3):
        go = torch.tensor(grad_output, dtype=torch.promote_types(dtype, y.dtype if y.is_floating_point() else dtype))
        fast = _run(x, y, w, reduction, go, through_operator=False)
        general = _run(x, y, w, reduction, go, through_operator=True)
        assert fast[0].dtype == general[0].dtype == go.dtype  # float32 for a half input's float32 target, as torch
        assert torch.equal(fast[0], general[0])
        assert torch.equal(fast[1], general[1])
        expected = torch.nn.functional.multilabel_soft_margin_loss(x.double(), y.double(), None if w is None else w.double(), reduction=reduction)
        rtol = {torch.float32: 1e-5, torch.float64: 1e-12}.get(dtype, 1e-2)  # float16/bfloat16: their rounding
        if target == "soft float32":  # the target is not rounded to the input's dtype: float32's accuracy
            rtol = 1e-5
        torch.testing.assert_close(fast[0].double(), expected, rtol=rtol, atol=0)


@pytest.mark.parametrize("shape", [(300, 5), (4, 700)])
def test_past_the_stack_buffers(shape):
    """One case each beyond the kernel's stack buffers, for the everyday run (the slow run has them all)."""
    x, y, w = _problem(*shape, torch.float32, "soft", shape[0] > 100, sum(shape))
    go = torch.tensor(0.75)
    fast, general = _run(x, y, w, "mean", go, False), _run(x, y, w, "mean", go, True)
    assert torch.equal(fast[0], general[0]) and torch.equal(fast[1], general[1])


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_large_gradient_scaled_on_threads_agrees(dtype):
    """A gradient of 2^18 elements or more is scaled on several threads in backward: still bitwise the operator's."""
    x, y, w = _problem(600, 500, dtype, "same", True, 8)
    go = torch.tensor(-1.7, dtype=dtype)
    fast, general = _run(x, y, w, "mean", go, False), _run(x, y, w, "mean", go, True)
    assert torch.equal(fast[0], general[0]) and torch.equal(fast[1], general[1])


def test_infinite_logits_stay_finite_and_agree():
    x = torch.tensor([[float("inf"), -float("inf"), 0.5], [float("inf"), 2.0, -float("inf")]])
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    fast = _run(x, y, None, "mean", torch.tensor(1.0), through_operator=False)
    general = _run(x, y, None, "mean", torch.tensor(1.0), through_operator=True)
    assert torch.equal(fast[0], general[0]) and torch.equal(fast[1], general[1])
    assert torch.isinf(fast[0]) and torch.isfinite(fast[1]).all()


def test_bad_values_raise_the_general_message():
    x = torch.randn(4, 3, requires_grad=True)
    bad_target = torch.tensor([[0.0, 1.0, 1.5]] * 4)
    with pytest.raises(ValueError, match="target"):
        st.multilabel_soft_margin_loss(x, bad_target)
    with pytest.raises(ValueError, match="target"):
        st.multilabel_soft_margin_loss(x.double(), bad_target.double())  # float64: checked by the reduced call
    for dtype in (torch.float32, torch.float64, torch.bfloat16):  # a byte target above 1, in every input dtype
        with pytest.raises(ValueError, match="target"):
            st.multilabel_soft_margin_loss(x.to(dtype), torch.full((4, 3), 2, dtype=torch.uint8))
        with pytest.raises(ValueError, match="target"):
            st.multilabel_soft_margin_loss(x.to(dtype), torch.full((4, 3), float("nan"), dtype=dtype))
    y = torch.ones(4, 3)
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):  # halves: converted by the kernel
        for bad in (-1.0, float("nan"), float("inf"), -float("inf")):
            with pytest.raises(ValueError, match="weight"):
                st.multilabel_soft_margin_loss(x.to(dtype), y.to(dtype), torch.tensor([1.0, bad, 1.0], dtype=dtype))
    # validate=False: not checked (torch's own loss does not check either), on the plain path too
    unchecked = st.multilabel_soft_margin_loss(x, bad_target, validate=False)
    assert type(unchecked.grad_fn).__name__ == "_PlainLossBackward"
    torch.testing.assert_close(unchecked, torch.nn.functional.multilabel_soft_margin_loss(x, bad_target))


def test_weight_changed_in_place_is_seen():
    """No cache between calls: a weight updated in place, also through ``.data`` or under no_grad, is used as it is."""
    x, y = torch.randn(8, 4), (torch.rand(8, 4) < 0.5).float()
    w = torch.ones(4)
    before = st.multilabel_soft_margin_loss(x, y, w)
    w.data.mul_(3.0)
    after = st.multilabel_soft_margin_loss(x, y, w)
    torch.testing.assert_close(after, 3 * before)
    torch.testing.assert_close(after, torch.nn.functional.multilabel_soft_margin_loss(x, y, w))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_second_backward_recomputes_the_same_gradient(dtype):
    x, y, w = _problem(40, 7, dtype, "soft", True, 1)
    xi = x.clone().requires_grad_()
    loss = st.multilabel_soft_margin_loss(xi, y, w)
    assert type(loss.grad_fn).__name__ == "_PlainLossBackward"
    go = torch.tensor(-0.3, dtype=dtype)
    (first,) = torch.autograd.grad(loss, xi, go, retain_graph=True)
    (second,) = torch.autograd.grad(loss, xi, go, retain_graph=True)  # the gradient was handed over: recomputed
    assert torch.equal(first, second)


def test_second_backward_and_second_order_take_the_general_backward():
    x, y, _ = _problem(6, 5, torch.float64, "soft", False, 1)
    xi = x.clone().requires_grad_()
    loss = st.multilabel_soft_margin_loss(xi, y)
    assert type(loss.grad_fn).__name__ == "_PlainLossBackward"
    (first,) = torch.autograd.grad(loss, xi, retain_graph=True)
    (second,) = torch.autograd.grad(loss, xi, retain_graph=True)  # the gradient was handed over: recomputed
    assert torch.equal(first, second)
    (g,) = torch.autograd.grad(loss, xi, create_graph=True)
    (hvp,) = torch.autograd.grad(g.sum(), xi)
    xr = x.clone().requires_grad_()
    (gr,) = torch.autograd.grad(torch.nn.functional.multilabel_soft_margin_loss(xr, y), xr, create_graph=True)
    (hvp_ref,) = torch.autograd.grad(gr.sum(), xr)
    torch.testing.assert_close(hvp, hvp_ref, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: st.multilabel_soft_margin_loss(t, y), (x.clone().requires_grad_(),))


@pytest.mark.parametrize(
    "case",
    ["non-contiguous", "3-d", "target needs grad", "weight needs grad", "float64 weight", "weight (1, C)",
     "bfloat16 with a float64 target", "float32 with a bfloat16 target", "no grad"],
)
def test_other_calls_take_the_general_path_and_stay_right(case):
    x, y = torch.randn(6, 5, dtype=torch.float64).float(), (torch.rand(6, 5) < 0.4).float()
    w, reduction = None, "mean"
    if case == "non-contiguous":
        x, y = torch.randn(5, 6).t(), (torch.rand(5, 6) < 0.4).float().t()
    elif case == "3-d":
        x, y = x.reshape(2, 3, 5), y.reshape(2, 3, 5)
    elif case == "target needs grad":
        y = y.clone().requires_grad_()
    elif case == "weight needs grad":
        w = torch.rand(5, requires_grad=True)
    elif case == "float64 weight":
        w = torch.rand(5, dtype=torch.float64)
    elif case == "weight (1, C)":
        w = torch.rand(1, 5)
    elif case == "bfloat16 with a float64 target":
        x, y = x.bfloat16(), y.double()
    elif case == "float32 with a bfloat16 target":
        y = y.bfloat16()
    xi = x.clone().requires_grad_(case != "no grad")
    loss = st.multilabel_soft_margin_loss(xi, y, w, reduction=reduction)
    assert type(loss.grad_fn).__name__ != "_PlainLossBackward"
    xr = x.clone().requires_grad_(case != "no grad")
    expected = torch.nn.functional.multilabel_soft_margin_loss(xr, y, w, reduction=reduction)
    tol = {"rtol": 1e-2, "atol": 1e-2} if x.dtype == torch.bfloat16 else {"rtol": 1e-5, "atol": 1e-7}
    torch.testing.assert_close(loss, expected, **tol)
    if case != "no grad":
        loss.sum().backward()
        expected.sum().backward()
        torch.testing.assert_close(xi.grad, xr.grad, **tol)


def test_no_grad_call_takes_the_plain_path():
    x, y, w = _problem(9, 4, torch.float32, "same", True, 2)
    with torch.no_grad():
        loss = st.multilabel_soft_margin_loss(x, y, w)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, torch.nn.functional.multilabel_soft_margin_loss(x, y, w))


def test_ctypes_calls_give_what_the_extension_gives(monkeypatch):
    """Where the ``_fastcall`` extension was not built, the same kernel functions are called through ctypes."""
    x, y, w = _problem(40, 30, torch.float32, "soft", True, 4)
    with_extension = _run(x, y, w, "mean", torch.tensor(0.5), through_operator=False)
    monkeypatch.setattr(cpu, "fastcall", lambda: None)
    without = _run(x, y, w, "mean", torch.tensor(0.5), through_operator=False)
    assert torch.equal(with_extension[0], without[0]) and torch.equal(with_extension[1], without[1])


def test_the_extension_is_built_where_the_headers_were():
    """The install builds ``_fastcall`` (it is optional: a machine without Python headers gets ctypes)."""
    import sysconfig
    from pathlib import Path

    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        pytest.skip("no Python headers here")
    assert cpu.fastcall() is not None


def test_a_kernel_call_lets_other_threads_run():
    """The extension's calls release the GIL while the kernel runs, as ctypes and torch's operators do: holding it, a
    multi-threaded server's other Python threads stopped for the whole length of each large loss (measured: 450 ms
    beside a loop of 8192 x 2000 losses).

    This thread timestamps a loop while another thread makes kernel calls; with the GIL released it runs during the
    calls, so one of its timestamps falls in the middle half of some call. Holding the GIL, no Python thread can run
    inside a call at all (a switch between the call's start time and the call itself lets this thread run for one
    switch interval, 0.1 ms here, at the start of the call, not in its middle half). Only a stall longer than half of
    every one of 18 calls (each about 10 ms here) could fail it on a busy machine: before, the test asked for no stall
    longer than half a call, which a loaded machine gave now and then with the GIL released."""
    import sys
    import threading
    import time

    fast = cpu.fastcall()
    if fast is None:
        pytest.skip("the _fastcall extension is not built here (ctypes releases the GIL itself)")
    x, y = torch.randn(4096, 2000), (torch.rand(4096, 2000) < 0.3).to(torch.uint8)
    grad, result = torch.empty_like(x), torch.empty(())
    # (float32 input, uint8 target, no weight, 4096 x 2000, one thread, mean, no check): see kernels/cpu.py's reduced()
    arguments = (0, 4, x.data_ptr(), y.data_ptr(), None, 0, 4096, 2000, grad.data_ptr(), 1, 0, 0, 1, False, result.data_ptr())  # fmt: skip
    assert fast.reduced(*arguments) == 0

    def calls_and_stamps() -> tuple[list[tuple[float, float]], list[float]]:
        """(start, end) of each kernel call made by another thread, and this thread's loop timestamps meanwhile."""
        done = threading.Event()
        calls: list[tuple[float, float]] = []

        def kernel_calls():
            try:
                for _ in range(6):
                    started = time.perf_counter()
                    fast.reduced(*arguments)
                    calls.append((started, time.perf_counter()))
            finally:
                done.set()

        thread = threading.Thread(target=kernel_calls)
        stamps: list[float] = []
        thread.start()
        while not done.is_set():
            stamps.append(time.perf_counter())
        thread.join()
        return calls, stamps

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)  # hand the GIL over every 0.1 ms (5 ms by default)
    try:
        for _ in range(3):
            calls, stamps = calls_and_stamps()
            inside = [
                sum(1 for t in stamps if start + (end - start) / 4 < t < end - (end - start) / 4) for start, end in calls
            ]
            if any(inside):
                return
    finally:
        sys.setswitchinterval(interval)
    pytest.fail(
        f"this thread never ran in the middle half of a kernel call ({[round(1e3 * (e - s), 1) for s, e in calls]} ms):"
        " the call holds the GIL"
    )


_FORKED_CHILD = """
import multiprocessing, sys
import numpy as np, torch
import softmargin.torch as st
rng = np.random.default_rng(10)
x, y = rng.standard_normal((1000, 300)).astype(np.float32), (rng.random((1000, 300)) < 0.3).astype(np.float32)
def loss_and_grad(_):
    xi = torch.from_numpy(x).requires_grad_()  # no torch operator of its own on more than one thread: those hang
    loss = st.multilabel_soft_margin_loss(xi, torch.from_numpy(y))
    loss.backward()
    assert type(loss.grad_fn).__name__ == "_PlainLossBackward"
    return loss.detach().numpy().tobytes() + xi.grad.numpy().tobytes()
if __name__ == "__main__":
    torch.set_num_threads(2)
    expected = loss_and_grad(0)  # on 2 threads: the parent's thread pool exists now
    with multiprocessing.get_context("fork").Pool(1) as pool:
        try:
            found = pool.map_async(loss_and_grad, [0]).get(timeout=30)[0]
        except multiprocessing.TimeoutError:
            sys.exit("the forked child hung (no result in 30 s)")
    sys.exit(0 if found == expected else "the forked child's results differ")
"""


def test_a_forked_child_computes_without_hanging(tmp_path):
    """A child forked after the kernel ran on several threads inherits a libgomp pool without its threads; there the
    forward pass's rows run on threads of the kernel's own and backward's scaling (300,000 elements: 2 threads in the
    parent) on the calling thread, both of which hung there before (tests/numpy has the NumPy API's case)."""
    script = tmp_path / "forked_child.py"
    script.write_text(_FORKED_CHILD)
    done = subprocess.run([sys.executable, str(script)], timeout=120, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_reduced_call_rejects_bad_arguments():
    x, y = torch.randn(3, 4), torch.ones(3, 4)
    out, grad = torch.empty(()), torch.empty(3, 4)
    w = torch.ones(4)
    good = (0, 0, x.data_ptr(), y.data_ptr(), w.data_ptr(), 0, 3, 4, grad.data_ptr(), 1, 0, 0, 1, True, out.data_ptr())
    assert cpu.reduced(*good) == 0
    for index, value, message in [
        (2, None, "NULL"), (6, -1, "positive"), (7, 0, "positive"), (10, 2, "per_sample_type"), (11, 4, "result_type"),
        (12, 3, "reduction"), (14, None, "result"), (0, 4, "xtype"), (6, 2**62, "overflows"),
        (5, 1, "weight_type"), (5, 3, "weight_type"),  # a float32 input's weight is float32
    ]:
        bad = list(good)
        bad[index] = value
        with pytest.raises(cpu.KernelArgumentError, match=message):
            cpu.reduced(*bad)
        fast = cpu.fastcall()
        if fast is not None:
            assert fast.reduced(*bad) < 0
    with pytest.raises(cpu.KernelArgumentError):
        cpu.scale(grad.data_ptr(), 4, 12, out.data_ptr(), 0, 1.0, 1)  # uint8: not a dtype it scales


def test_module_takes_the_plain_path_and_keeps_its_errors():
    x, y, w = _problem(12, 6, torch.float32, "soft", True, 5)
    xi = x.clone().requires_grad_()
    loss = st.MultiLabelSoftMarginLoss(weight=w)(xi, y)
    assert type(loss.grad_fn).__name__ == "_PlainLossBackward"
    loss.backward()
    xr = x.clone().requires_grad_()
    torch.nn.MultiLabelSoftMarginLoss(weight=w)(xr, y).backward()
    torch.testing.assert_close(xi.grad, xr.grad)
    with pytest.raises(ValueError, match="label_smoothing"):  # options and an option argument: refused, as before
        st.multilabel_soft_margin_loss(x, y, options=st.LossOptions(), label_smoothing=0.1)


@pytest.mark.parametrize(("backend", "plain"), [("torch", False), ("cpu", True), ("auto", True)])
def test_backend_override_is_honoured(backend, plain, monkeypatch):
    monkeypatch.setenv("SOFTMARGIN_BACKEND", backend)
    x, y, _ = _problem(5, 4, torch.float32, "same", False, 6)
    loss = st.multilabel_soft_margin_loss(x.requires_grad_(), y)
    assert (type(loss.grad_fn).__name__ == "_PlainLossBackward") is plain
    torch.testing.assert_close(loss, torch.nn.functional.multilabel_soft_margin_loss(x, y))


def _in_a_fresh_flushing_thread(work):
    """``work()`` on a fresh thread with flush-to-zero / denormals-are-zero set (``torch.set_flush_denormal``): its
    result returned here, its exception raised here; the test skipped where the CPU has no such mode. A fresh thread,
    because OpenMP workers start in the mode their thread holds when it first runs a parallel region."""
    import threading

    found: dict[str, object] = {}

    def run():
        try:
            if not torch.set_flush_denormal(True):
                found["skip"] = True
                return
            found["result"] = work()
        except BaseException as error:  # reported in the main thread
            found["error"] = error
        finally:
            torch.set_flush_denormal(False)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in found:
        raise found["error"]  # type: ignore[misc]
    if found.get("skip"):
        pytest.skip("this CPU has no flush-to-zero mode")
    return found["result"]


def test_a_thread_in_flush_to_zero_mode_changes_nothing():
    """XLA runs JAX's host callbacks with flush-to-zero / denormals-are-zero set, and OpenMP workers started from such
    a thread keep that mode: a float16 gradient of subnormals (1e-6) came back 0 on the second thread's rows. The
    kernel computes in IEEE mode on every thread and gives the caller's mode back."""
    x, y, w = _problem(600, 500, torch.float16, "same", True, 8)
    go = torch.tensor(-1.7, dtype=torch.float16)
    both = lambda: [_run(x, y, w, "mean", go, through_operator) for through_operator in (False, True)]
    expected = both()
    assert (expected[0][1].abs() < 6e-5).any()  # float16 subnormals: what a flushing mode loses

    def work():
        flushing = both()
        mode_kept = bool(torch.tensor(1e-39) * 1.0 == 0)  # DAZ/FTZ still the caller's
        torch.set_flush_denormal(False)  # the workers keep theirs
        return {"flushing": flushing, "after": both(), "mode kept": mode_kept}

    found = _in_a_fresh_flushing_thread(work)
    assert found["mode kept"]
    for key in ("flushing", "after"):
        for (loss, grad), (expected_loss, expected_grad) in zip(found[key], expected):
            assert torch.equal(loss, expected_loss) and torch.equal(grad, expected_grad), key


@pytest.mark.parametrize(("dtype", "incoming"), [(torch.float32, 1e-39), (torch.float16, 5e-6), (torch.float64, 1e-310)])  # fmt: skip
def test_a_subnormal_incoming_gradient_in_a_flush_to_zero_thread_is_not_zero(dtype, incoming):
    """Backward scales the gradient by autograd's incoming one (``softmargin_scale``), which the kernel read before it
    entered IEEE mode: under denormals-are-zero a subnormal incoming gradient (``(loss * 1e-5).backward()`` in
    float16) read as 0, and the whole gradient came back 0 (nonzero on a thread in IEEE mode)."""
    x, y, _ = _problem(64, 80, dtype, "same", False, 9)
    go = torch.tensor(incoming, dtype=dtype)
    assert 0 < go.abs() < torch.finfo(dtype).tiny  # subnormal in its dtype
    expected = _run(x, y, None, "sum", go, through_operator=False)
    reference = (torch.sigmoid(x.double()) - y.double()) / x.shape[1] * go.double()  # d loss / d x, float64
    smallest = torch.finfo(dtype).smallest_normal * torch.finfo(dtype).eps  # the dtype's smallest subnormal
    torch.testing.assert_close(expected[1].double(), reference, rtol=0, atol=smallest)  # in IEEE mode: right
    loss, grad = _in_a_fresh_flushing_thread(lambda: _run(x, y, None, "sum", go, through_operator=False))
    assert torch.equal(loss, expected[0])
    nonzero = int((grad != 0).sum()), int((expected[1] != 0).sum())
    assert torch.equal(grad, expected[1]), f"{nonzero[0]} nonzero elements, expected {nonzero[1]}"
