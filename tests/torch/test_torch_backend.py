"""The pure-torch backend's short path (``softmargin.torch._fallback``: no focusing, no pos_weight) against the float64
formula and mpmath, on one and two threads, at chunk edges, signed zeros and infinities."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import OPTION_CASES, RTOL, assert_close, formula_rows, long_rows_with_exact_sums, option_operands

torch = pytest.importorskip("torch")

import softmargin.torch as st
from softmargin._chunks import Rows
from softmargin.torch import _backends, _fallback

SHORT_CASES = [name for name, spec in OPTION_CASES.items() if "pos_weight" not in spec and "gamma_pos" not in spec
               and "gamma_neg" not in spec]  # fmt: skip


@pytest.fixture(params=[1, 2], ids=["one thread", "two threads"])
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def _short(x, y, opts, scale, row_scale=None, chunk_elements=_fallback.PLAIN_CHUNK_ELEMENTS):
    cdtype = _backends.compute_dtype(x.dtype)
    rows = _backends._rows(x, y, opts.get("weight"), None, opts.get("mask"), cdtype)
    sums = torch.empty(x.shape[0], dtype=torch.float64)
    grad = torch.empty_like(x)
    _fallback.plain_loss_rows(rows, opts.get("label_smoothing", 0.0), scale if row_scale is None else row_scale,
                              True, cdtype, sums, grad, chunk_elements)  # fmt: skip
    return sums, grad


@pytest.mark.parametrize("case", SHORT_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", [(5, 7), (70, 1000)], ids=["small", "larger"])
def test_short_path_matches_the_float64_formula(case, dtype, shape, threads):
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 4).to(dtype)
    y = torch.rand(shape, generator=gen, dtype=torch.float64).to(dtype)
    y[::2] = (y[::2] > 0.5).to(dtype)  # hard and soft labels
    opts = option_operands(OPTION_CASES[case], dtype, *shape)
    sums, grad = _short(x, y, opts, 0.01)
    expected_sums, expected_grad = formula_rows(x, y, opts, 0.01)
    rtol = RTOL["float32" if dtype == torch.bfloat16 else str(dtype).split(".")[1]]  # computed in float32
    assert_close(sums.numpy(), expected_sums.numpy(), rtol * 4, f"{case} sums")
    grad_rtol = RTOL["bfloat16"] if dtype == torch.bfloat16 else rtol * 4  # the gradient is rounded to the input
    assert_close(grad.double().numpy(), expected_grad.numpy(), grad_rtol, f"{case} grad")


@pytest.mark.parametrize("row_scale", [False, True])
def test_threads_and_chunks_change_nothing(row_scale, threads):
    """Every row is computed alike whatever the chunk that holds it: equal to the bit."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(203, 640, generator=gen) * 3
    y = torch.rand(203, 640, generator=gen)
    opts = {"weight": torch.rand(640, generator=gen) + 0.25, "mask": torch.rand(203, 640, generator=gen) < 0.8}
    scale = torch.rand(203, generator=gen, dtype=torch.float64) if row_scale else None
    one_chunk = _short(x, y, opts, 0.5, scale, chunk_elements=1 << 30)
    for chunk_elements in (640 * 7, 1000):  # chunks of 7 rows (the last one short), and of one row
        for ours, theirs in zip(_short(x, y, opts, 0.5, scale, chunk_elements=chunk_elements), one_chunk):
            assert torch.equal(ours, theirs)


def test_signed_zeros_and_infinities_are_exact(threads):
    x = torch.tensor([[0.0, -0.0, 0.0, -0.0, math.inf, -math.inf, math.inf, -math.inf, math.inf, -math.inf]])
    y = torch.tensor([[1.0, 1.0, 0.25, 0.25, 1.0, 0.0, 0.0, 1.0, 0.5, 0.5]])
    sums, grad = _short(x.repeat(70, 100), y.repeat(70, 100), {}, 1.0)
    # per block of 10: four elements at 0 (log 2 each), two right and four wrong predictions at infinity
    assert torch.isinf(sums).all()
    expected_grad = torch.tensor([[-0.5, -0.5, 0.25, 0.25, 0.0, 0.0, 1.0, -1.0, 0.5, -0.5]]).repeat(70, 100)
    assert torch.equal(grad, expected_grad)
    right = _short(x[:, :6].repeat(70, 100), y[:, :6].repeat(70, 100), {}, 1.0)
    assert torch.allclose(right[0], torch.full((70,), 400 * math.log(2), dtype=torch.float64), rtol=1e-6, atol=0)


def test_zero_weight_removes_an_infinite_loss_and_a_large_weight_does_not_overflow(threads):
    x = torch.tensor([[math.inf, 1.0, -3.0e38]]).repeat(70, 500)
    y = torch.tensor([[0.0, 1.0, 1.0]]).repeat(70, 500)
    w = torch.tensor([0.0, 2.0, 3.0]).repeat(500)
    sums, grad = _short(x, y, {"weight": w}, 1.0)
    # per block of 3: 0 (removed), 2 * log1p(exp(-1)), 3 * 3e38 (beyond float32, not beyond the float64 row sum)
    expected = 500 * (2 * math.log1p(math.exp(-1.0)) + 3 * 3.0e38)
    assert torch.isfinite(sums).all() and torch.allclose(sums, torch.full((70,), expected, dtype=torch.float64))
    assert torch.isfinite(grad).all() and (grad[:, 0::3] == 0).all()
    sums, grad = _short(x, y, {"mask": w > 0}, 1.0)  # a mask alone: no weight to scale, and no overflow either
    expected = 500 * (math.log1p(math.exp(-1.0)) + 3.0e38)
    assert torch.isfinite(sums).all() and torch.allclose(sums, torch.full((70,), expected, dtype=torch.float64))
    assert torch.isfinite(grad).all() and (grad[:, 0::3] == 0).all()


def test_float32_row_sums_against_mpmath(threads):
    x, y, w, exact = long_rows_with_exact_sums(64, 1500, seed=5)
    sums, _ = _short(x, y, {"weight": w}, 1.0)
    assert_close(sums.numpy(), exact, 2e-7, "row sums")


def test_public_api_on_the_torch_backend_matches_torch(monkeypatch, threads):
    monkeypatch.setenv("SOFTMARGIN_BACKEND", "torch")
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(96, 700, generator=gen, dtype=torch.float64, requires_grad=True)
    y = (torch.rand(96, 700, generator=gen) < 0.2).double()
    w = torch.rand(700, generator=gen, dtype=torch.float64) + 0.5
    for reduction in ("mean", "sum", "none"):
        x.grad = None
        st.multilabel_soft_margin_loss(x, y, w, reduction=reduction).sum().backward()
        ours = x.grad.clone()
        x.grad = None
        expected = torch.nn.functional.multilabel_soft_margin_loss(x, y, w, reduction=reduction)
        expected.sum().backward()
        torch.testing.assert_close(ours, x.grad, rtol=1e-12, atol=1e-15)
        assert np.isfinite(ours.numpy()).all()


def test_pos_weight_is_refused():
    rows = Rows(torch.zeros(1, 2), torch.zeros(1, 2), pos_weight=torch.ones(1, 2))
    with pytest.raises(ValueError, match="without pos_weight"):
        _fallback.plain_loss_rows(rows, 0.0, 1.0, False, torch.float32, torch.empty(1, dtype=torch.float64), None)


# ---- the defects that reverted the first short path, every target dtype and option, through the public API --------


def _general(x, y, opts, reduction="none"):
    """The general chunked formula (``_chunks.loss_rows``: the path the short one replaces), as the reference for
    the special values (infinities, NaN) whose handling the float64 formula and torch do not share."""
    return _backends._chunked(x, y, opts.get("weight"), None, opts.get("mask"), st.LossOptions(
        label_smoothing=opts.get("label_smoothing", 0.0)), reduction, True, short_path=False)  # fmt: skip


def _short_public(x, y, opts, reduction):
    """Loss and input gradient through ``softmargin.torch`` on the torch backend (its short path)."""
    x = x.detach().clone().requires_grad_()
    loss = st.multilabel_soft_margin_loss(x, y, **opts, reduction=reduction)
    loss.sum().backward()
    return loss.detach(), x.grad


@pytest.fixture
def torch_backend(monkeypatch):
    from helpers import use_backend

    use_backend("chunked", monkeypatch)
    calls = []
    original = _fallback.plain_loss_rows
    monkeypatch.setattr(_backends, "plain_loss_rows", lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


@pytest.mark.parametrize("target_dtype", [torch.bool, torch.uint8, torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("weighted", [False, True])
def test_every_target_dtype_matches_torch(target_dtype, reduction, weighted, torch_backend):
    """A bool target raised in the first short path (torch.sub on bool); every target dtype now gives torch's loss
    and gradient (torch's own function on float64 operands is the reference)."""
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(37, 301, generator=gen) * 4
    hard = torch.rand(37, 301, generator=gen) < 0.3
    y = hard.to(target_dtype)
    opts = {"weight": torch.rand(301, generator=gen) + 0.1} if weighted else {}
    loss, grad = _short_public(x, y, opts, reduction)
    assert torch_backend, "the short path did not run"
    x64 = x.double().requires_grad_()
    w64 = opts["weight"].double() if weighted else None
    expected = torch.nn.functional.multilabel_soft_margin_loss(x64, hard.double(), w64, reduction=reduction)
    expected.sum().backward()
    assert_close(loss.double().numpy(), expected.detach().numpy(), 4e-6, "loss")
    assert_close(grad.double().numpy(), x64.grad.numpy(), 4e-6, "grad")


@pytest.mark.parametrize("magnitude", ["huge", "tiny"])
def test_extreme_weights_keep_their_row_sums(magnitude, torch_backend):
    """The first short path divided the weight by a power of two >= its largest value: near 3e38 that divisor
    overflowed float32 (row sums 0), and subnormal weights (1e-40) flushed to zero. Now each w * l is a float64
    product: row sums beyond float32 stay finite in float64 (with a float64 weight), tiny weights keep their
    value."""
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(9, 700, generator=gen)  # losses up to 4: w * l beyond float32, each row's mean below 3e38
    y = (torch.rand(9, 700, generator=gen) < 0.5).float()
    value = 3.0e38 if magnitude == "huge" else 1.0e-40
    w = torch.full((700,), value, dtype=torch.float32)
    w[::7] = 0.0  # zero weights among them
    expected = (torch.nn.functional.binary_cross_entropy_with_logits(x.double(), y.double(), reduction="none")
                * w.double()).mean(1)  # fmt: skip
    for weight in (w, w.double()):
        loss, _ = _short_public(x, y, {"weight": weight}, "none")
        assert torch.isfinite(loss).all() and (loss > 0).all()
        assert loss.dtype == weight.dtype  # torch's per-sample dtype (per_sample_dtype)
        # (float32 means of a 1e-40 weight are subnormal: rounded to a multiple of 2^-149 at the end)
        subnormal_step = torch.finfo(loss.dtype).smallest_normal * torch.finfo(loss.dtype).eps
        assert_close(loss.double().numpy(), expected.to(loss.dtype).double().numpy(), 4e-6,
                     f"{magnitude} weight, {weight.dtype}", atol=subnormal_step)  # fmt: skip
    if magnitude == "huge":
        assert (torch.nn.functional.binary_cross_entropy_with_logits(x, y, reduction="none") * w).isinf().any()
    assert torch_backend


def test_float64_weight_with_float32_logits_is_float64_as_torch(torch_backend):
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(20, 50, generator=gen)
    y = torch.rand(20, 50, generator=gen)
    w = torch.rand(50, generator=gen, dtype=torch.float64) * 1e300  # no float32 holds it
    loss = st.multilabel_soft_margin_loss(x, y, w, reduction="none")
    expected = torch.nn.functional.multilabel_soft_margin_loss(x, y, w, reduction="none")
    assert loss.dtype == expected.dtype == torch.float64
    assert_close(loss.numpy(), expected.numpy(), 4e-6, "per-sample")
    assert torch_backend


@pytest.mark.parametrize("case", SHORT_CASES)
@pytest.mark.parametrize("targets", ["hard", "soft", "mixed"])
def test_options_match_the_general_path_at_special_values(case, targets, torch_backend):
    """+-inf, NaN, +-0 and huge logits, hard and soft targets, zero weights: loss and gradient as the general
    chunked formula's (NaN where it is NaN), and finite values as the float64 formula's."""
    gen = torch.Generator().manual_seed(14)
    x = torch.randn(40, 64, generator=gen) * 5
    x[0, :10] = torch.tensor([math.inf, -math.inf, 0.0, -0.0, 3e38, -3e38, math.inf, -math.inf, 1e-30, -1e-30])
    x[1, 3] = math.nan
    x[2, 3] = math.inf  # a weight of 0 at column 3 in the weighted cases: the element is removed
    soft = torch.rand(40, 64, generator=gen)
    y = {"hard": (soft < 0.5).float(), "soft": soft, "mixed": torch.where(torch.arange(40)[:, None] < 20, soft.round(), soft)}[targets]
    y[0, :10] = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0])  # right, right, at zero, wrong
    opts = option_operands(OPTION_CASES[case], torch.float32, 40, 64)
    chunk = _fallback.PLAIN_CHUNK_ELEMENTS
    for chunk_elements in (chunk, 64 * 7):  # one chunk; chunks of 7 rows (hard and soft ones in the mixed case)
        _fallback.PLAIN_CHUNK_ELEMENTS = chunk_elements
        try:
            loss, grad = _short_public(x, y, opts, "none")
        finally:
            _fallback.PLAIN_CHUNK_ELEMENTS = chunk
        reference, reference_grad, _ = _general(x, y, opts)
        assert torch.equal(torch.isnan(loss), torch.isnan(reference)), case
        assert torch.equal(torch.isinf(loss), torch.isinf(reference)), case
        finite = torch.isfinite(reference)
        assert_close(loss[finite].double().numpy(), reference[finite].double().numpy(), 4e-6, f"{case} loss")
        assert torch.equal(torch.isnan(grad), torch.isnan(reference_grad)), case
        assert_close(torch.nan_to_num(grad).double().numpy(), torch.nan_to_num(reference_grad).double().numpy(),
                     4e-6, f"{case} grad")  # fmt: skip
    assert torch_backend


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_with_many_classes(dtype, torch_backend):
    gen = torch.Generator().manual_seed(15)
    x = (torch.randn(3, 70000, generator=gen) * 8).to(dtype)
    y = (torch.rand(3, 70000, generator=gen) < 0.01).to(dtype)
    loss, grad = _short_public(x, y, {}, "none")
    x64 = x.double().requires_grad_()
    expected = torch.nn.functional.multilabel_soft_margin_loss(x64, y.double(), reduction="none")
    expected.sum().backward()
    # each row's sum (about 2e5) is far beyond float16's range; the mean is not
    assert loss.dtype == dtype and torch.isfinite(loss).all()
    assert_close(loss.double().numpy(), expected.detach().to(dtype).double().numpy(), RTOL[str(dtype)[6:]], "loss")
    assert grad.dtype == dtype and (grad != 0).float().mean() > 0.5
    step = torch.finfo(dtype).smallest_normal * torch.finfo(dtype).eps  # below it a float16 gradient is 0
    assert_close(grad.double().numpy(), x64.grad.numpy(), RTOL[str(dtype)[6:]], "grad", atol=step)
    assert torch_backend


def test_empty_batches_and_non_contiguous_operands(torch_backend):
    for reduction in ("mean", "sum", "none"):
        empty = torch.zeros(0, 5, requires_grad=True)
        ours = st.multilabel_soft_margin_loss(empty, torch.zeros(0, 5), reduction=reduction)
        theirs = torch.nn.functional.multilabel_soft_margin_loss(empty, torch.zeros(0, 5), reduction=reduction)
        assert ours.shape == theirs.shape and torch.equal(torch.isnan(ours), torch.isnan(theirs))
    gen = torch.Generator().manual_seed(16)
    x = (torch.randn(300, 40, generator=gen) * 3).t()  # (40, 300), transposed
    y = (torch.rand(300, 40, generator=gen) < 0.3).float().t()
    w = (torch.rand(600, generator=gen) + 0.5)[::2]
    assert not (x.is_contiguous() or y.is_contiguous() or w.is_contiguous())
    for reduction in ("mean", "none"):
        loss, grad = _short_public(x, y, {"weight": w}, reduction)
        x64 = x.double().requires_grad_()
        expected = torch.nn.functional.multilabel_soft_margin_loss(x64, y.double(), w.double(), reduction=reduction)
        expected.sum().backward()
        assert_close(loss.double().numpy(), expected.detach().numpy(), 4e-6, "loss")
        assert_close(grad.double().numpy(), x64.grad.numpy(), 4e-6, "grad")
    assert torch_backend


def test_target_that_requires_grad_gets_torchs_gradient(torch_backend):
    gen = torch.Generator().manual_seed(17)
    x = torch.randn(8, 30, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.rand(8, 30, generator=gen, dtype=torch.float64, requires_grad=True)
    st.multilabel_soft_margin_loss(x, y).backward()
    ours = x.grad.clone(), y.grad.clone()
    x.grad = y.grad = None
    torch.nn.functional.multilabel_soft_margin_loss(x, y).backward()
    torch.testing.assert_close(ours[0], x.grad, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(ours[1], y.grad, rtol=1e-12, atol=1e-15)
    assert torch_backend


@pytest.mark.parametrize(
    "bad", [(torch.float32, 1.5), (torch.float32, -0.25), (torch.float32, math.nan), (torch.float64, 1 + 1e-12),
            (torch.float32, -1e-45), (torch.uint8, 2)],  # fmt: skip
)
def test_targets_out_of_range_are_refused_on_the_short_path(bad, torch_backend):
    """The short path checks the target as it reads it (the same pass tells whether all targets are 0 or 1)."""
    dtype, value = bad
    y = torch.zeros(6, 9, dtype=dtype)
    y[4, 7] = value
    with pytest.raises(ValueError, match=r"target has 1 values? outside \[0, 1\].*\(4, 7\)"):
        st.multilabel_soft_margin_loss(torch.zeros(6, 9), y)
    y[4, 7] = -0.0 if dtype.is_floating_point else 1  # valid: only -0.0's bits look out of range
    assert torch.isfinite(st.multilabel_soft_margin_loss(torch.zeros(6, 9), y))
    assert torch_backend


@pytest.mark.parametrize("values", [[0.0, 1.0, -0.0], [0.5, 1.0], [1 - 2**-24, 0.0], [2**-149, 1.0], [1e-8, 0.0]])
def test_target_kind(values):
    """Only exact zeros and ones (either zero) are hard: a target that rounds to them under 1 - 2y is not."""
    y = torch.tensor(values, dtype=torch.float32)
    expected = "hard" if all(v in (0.0, 1.0) for v in values) else "soft"
    assert _fallback.target_kind(y) == expected
    assert _fallback.target_kind(y.double()) == expected
    assert _fallback.target_kind(torch.tensor([0.5, 1.0 + 2**-23])) == "invalid"


@pytest.mark.slow  # a compilation (2 s); CI runs it
def test_compiled_and_eager_agree_on_the_torch_backend(torch_backend):
    """Under torch.compile (and FakeTensor tracing) the operator is opaque: the short path runs on real tensors
    only, inside it, and the compiled call gives bitwise the eager result."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    gen = torch.Generator().manual_seed(18)
    x = torch.randn(33, 70, generator=gen)
    y = (torch.rand(33, 70, generator=gen) < 0.4).float()
    w = torch.rand(70, generator=gen)

    def step(x):
        x = x.detach().requires_grad_()
        loss = st.multilabel_soft_margin_loss(x, y, w)
        loss.backward()
        return loss.detach(), x.grad

    eager = step(x)
    compiled = torch.compile(step, backend="aot_eager")(x)
    assert torch.equal(eager[0], compiled[0]) and torch.equal(eager[1], compiled[1])
    with FakeTensorMode() as mode:
        fake = st.multilabel_soft_margin_loss(mode.from_tensor(x), mode.from_tensor(y), mode.from_tensor(w))
    assert fake.shape == () and fake.dtype == torch.float32
    assert torch_backend


def test_unweighted_float32_row_sums_against_mpmath(threads):
    """Unweighted rows are summed in float32 (torch's cascade sum; every term is non-negative): still within a few
    float32 ulps of the exact sums (mpmath per element, math.fsum per row)."""
    from helpers import exact_element_loss

    rng = np.random.default_rng(19)
    values = np.concatenate([-np.logspace(-4, 1.5, 200), np.logspace(-4, 1.5, 200)]).astype(np.float32)
    table = np.array([[exact_element_loss(float(v), t) for v in values] for t in (0.0, 1.0)])
    pick = rng.integers(0, values.size, size=(64, 3000))
    y = (rng.random((64, 3000)) < 0.1).astype(np.int64)
    exact = np.array([math.fsum(row) for row in table[y, pick]])
    sums, _ = _short(torch.from_numpy(values[pick]), torch.from_numpy(y.astype(np.float32)), {}, 1.0)
    assert_close(sums.numpy(), exact, 3e-7, "row sums")


def test_weight_times_loss_beyond_float32_in_a_weight_multiplied_in_place(torch_backend):
    """A weight in [2^-64, 2^64] multiplies the losses in float32; where w * l overflows float32 (the mean does not)
    the row is computed again in float64."""
    gen = torch.Generator().manual_seed(20)
    x = torch.randn(6, 700, generator=gen)
    y = (torch.rand(6, 700, generator=gen) < 0.5).float()
    x[:, 5], y[:, 5] = 1e21, 0.0  # a loss of 1e21, times 2^60: 1.2e39
    w = torch.full((700,), 2.0**60)
    loss, grad = _short_public(x, y, {"weight": w}, "none")
    expected = (torch.nn.functional.binary_cross_entropy_with_logits(x.double(), y.double(), reduction="none")
                * w.double()).mean(1)  # fmt: skip
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    assert_close(loss.double().numpy(), expected.numpy(), 4e-6, "loss")
    assert torch_backend
