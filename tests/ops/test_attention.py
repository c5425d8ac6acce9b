"""Parity of the attention backends with softmax(q k^T / sqrt(d)) v in float64, forward and backward; dispatch,
argument checks and one torch.compile(fullgraph=True) run."""
import math

import pytest
import torch

import mcm_fast as mf
from mcm_fast.ops import dispatch

BACKENDS = mf.available_backends("attention")
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
SHAPES = [(2, 3, 37, 37, 32), (1, 2, 100, 100, 64), (3, 1, 37, 100, 64), (2, 2, 100, 37, 32), (1, 1, 257, 257, 128),
          (1, 2, 257, 100, 64), (2, 1, 1, 33, 128)]  # B, heads, N, M, d


def shape_id(shape):
    return "B{}-h{}-N{}-M{}-d{}".format(*shape)


def softmax_attention(q, k, v):
    """The formula with an explicit max-shifted exp and normalization, in the inputs' dtype."""
    scores = torch.einsum("bhnd,bhmd->bhnm", q, k) / math.sqrt(q.shape[-1])
    weights = (scores - scores.amax(dim=-1, keepdim=True)).exp()
    return torch.einsum("bhnm,bhmd->bhnd", weights / weights.sum(dim=-1, keepdim=True), v)


def inputs(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    b, h, n, m, d = shape
    return [torch.randn(b, h, t, d, generator=g).to(dtype) for t in (n, m, m)]


def max_err(x, ref):
    return (x.double() - ref).abs().max().item()


def forward_backward(fn, q, k, v, dout):
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    out = fn(q, k, v)
    out.backward(dout)
    return [out, q.grad, k.grad, v.grad]


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_float64_softmax(backend, shape, dtype):
    """Output and gradients within 2x the error of the formula computed in the dtype, plus 4 ulps of scale: the
    kernel's exp2 of log2(e)-scaled scores rounds its arguments (|score| up to a few units) where the formula's
    exp does not."""
    q, k, v = inputs(shape, dtype, seed=sum(shape) + len(str(dtype)))
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(7)).to(dtype)
    exact = forward_backward(softmax_attention, *(x.double() for x in (q, k, v, dout)))
    in_dtype = forward_backward(softmax_attention, q, k, v, dout)
    got = forward_backward(lambda *a: mf.attention(*a, backend=backend), q, k, v, dout)
    assert got[0].dtype == dtype and got[0].shape == q.shape, f"o: {got[0].dtype} {tuple(got[0].shape)}"
    for name, x, base, ref in zip(("o", "dq", "dk", "dv"), got, in_dtype, exact):
        tol = 2 * max_err(base, ref) + 4 * torch.finfo(dtype).eps * ref.abs().max().item()
        err = max_err(x, ref)
        assert err <= tol, f"{name} ({backend}, {dtype}): max error {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 37, 4, 32, generator=g).transpose(1, 2)  # [B, h, N, d] viewed from [B, N, h, d]
    k = torch.randn(2, 4, 32, 37, generator=g).transpose(2, 3)  # head_dim strided
    v = torch.randn(2, 4, 37, 64, generator=g)[..., ::2]  # every other element
    assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous())
    want = mf.attention(q.contiguous(), k.contiguous(), v.contiguous(), backend=backend)
    torch.testing.assert_close(mf.attention(q, k, v, backend=backend), want, msg=lambda m: f"o (non-contiguous): {m}")


def test_backends_and_default(monkeypatch):
    assert BACKENDS[-2:] == ["sdpa", "reference"], BACKENDS
    assert mf.available_backends()[-2:] == ["sdpa", "reference"], mf.available_backends()
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # else triton may run on CPU tensors
    impl = dispatch("attention", torch.device("cpu"), needs_grad=True)
    assert impl.__name__ == "attention_sdpa", impl


@pytest.mark.skipif("triton" not in BACKENDS, reason="triton cannot run here")
def test_triton_head_dims():
    q = torch.randn(1, 2, 5, 48)
    with pytest.raises(RuntimeError,
                       match=r"backend=.triton. cannot run attention here: supports head_dim \(32, 64, 128\), got 48"):
        mf.attention(q, q, q, backend="triton")
    torch.testing.assert_close(mf.attention(q, q, q), softmax_attention(q, q, q))  # the default passes triton over


def test_unavailable_backend_names_the_backends():
    q = torch.randn(1, 2, 5, 8)
    with pytest.raises(RuntimeError, match=r"backend='cuda' cannot run attention.*\(cuda: .*; triton: .*; cpu: .*; "
                                           r"sdpa: ok; reference: ok\)"):
        mf.attention(q, q, q, backend="cuda")
    with pytest.raises(ValueError, match="backend: expected one of"):
        mf.attention(q, q, q, backend="flash")


def test_environment_variable_picks_the_backend(monkeypatch):
    q = torch.randn(1, 2, 5, 8)
    monkeypatch.setenv("MCM_FAST_BACKEND", "reference")
    torch.testing.assert_close(mf.attention(q, q, q), softmax_attention(q, q, q))
    monkeypatch.setenv("MCM_FAST_BACKEND", "cpu")
    with pytest.raises(RuntimeError, match="MCM_FAST_BACKEND='cpu' cannot run attention"):
        mf.attention(q, q, q)


@pytest.mark.parametrize(
    "q,k,v,error,match",
    [
        ((2, 5, 8), (1, 2, 5, 8), (1, 2, 5, 8), ValueError, r"q: expected a \[B, \.\.\.\] tensor with at least 4"),
        ((1, 2, 5, 8, 1), (1, 2, 5, 8), (1, 2, 5, 8), ValueError, r"q: expected a \[B, heads, tokens, head_dim\]"),
        ((1, 2, 5, 8), (1, 3, 5, 8), (1, 3, 5, 8), ValueError, r"k: expected shape \[1, 2, tokens, 8\]"),
        ((1, 2, 5, 8), (1, 2, 6, 4), (1, 2, 6, 8), ValueError, r"k: expected shape \[1, 2, tokens, 8\]"),
        ((1, 2, 5, 8), (1, 2, 6, 8), (2, 2, 6, 8), ValueError, r"v: expected shape \[1, 2, tokens, 8\]"),
        ((1, 2, 5, 8), (1, 2, 6, 8), (1, 2, 7, 8), ValueError, r"v: expected 6 tokens like k"),
    ],
)
def test_bad_shapes_name_the_argument(q, k, v, error, match):
    with pytest.raises(error, match=match):
        mf.attention(torch.randn(q), torch.randn(k), torch.randn(v))


def test_bad_types_name_the_argument():
    q = torch.randn(1, 2, 5, 8)
    with pytest.raises(TypeError, match="q: expected dtype float16"):
        mf.attention(q.long(), q, q)
    with pytest.raises(TypeError, match="k: expected dtype torch.float32 like q"):
        mf.attention(q, q.double(), q)
    with pytest.raises(TypeError, match="v: expected a torch.Tensor"):
        mf.attention(q, q, q.numpy())
    with pytest.raises(ValueError, match="v: expected device cpu like q"):
        mf.attention(q, q, q.to("meta"))


def test_meta_device():
    q = torch.empty(2, 4, 100, 64, device="meta")
    for backend in BACKENDS:
        out = mf.attention(q, q[:, :, :37], q[:, :, :37], backend=backend)
        assert out.shape == q.shape and out.device.type == "meta", f"o ({backend}): {out.shape} {out.device}"


def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()

    def fn(q, k, v):
        return mf.attention(q, k, v) * 2

    q, k, v = inputs((2, 2, 37, 37, 32), torch.float32, seed=11)
    torch.testing.assert_close(torch.compile(fn, fullgraph=True)(q, k, v), fn(q, k, v),
                               msg=lambda m: f"compiled o: {m}")


@pytest.mark.skipif("triton" not in BACKENDS, reason="triton cannot run here")
def test_triton_opcheck():
    """The Triton ops' schema, fake and autograd registration (the compile-mode traces need a GPU: the
    interpreter cannot run on fake tensors)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tests = ("test_schema", "test_autograd_registration", "test_faketensor")
    if device == "cuda":
        tests += ("test_aot_dispatch_dynamic",)
    q, k, v = (x.to(device) for x in inputs((1, 2, 37, 33, 32), torch.float32, seed=5))
    torch.library.opcheck(torch.ops.mcm_fast.attention_triton.default, (q, k, v), test_utils=tests)
    o, lse = torch.ops.mcm_fast.attention_triton(q, k, v)
    args = (torch.randn_like(o), q, k, v, o, lse)
    torch.library.opcheck(torch.ops.mcm_fast.attention_backward_triton.default, args, test_utils=tests)
