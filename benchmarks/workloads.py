"""The benchmarks' shapes and what each call must move and compute: shared by the benchmarks, which divide by the
measured time, and by benchmarks/roofline.py, which divides by the H100's and H200's peaks.

Bytes are the least each call must move, in the data's dtype: ddim_step and addim_step read x_hat and z_t and write
z_s (3 tensors); mcm_target reads x_ref, z_s, z_t and writes x_target (4); mcm_target_loss reads x_hat, x_ref,
z_s, z_t (4) and with its backward also writes dL/dx_hat (5). Attention counts 4 B H N^2 d FLOPs forward (two
matrix products) and 2.5 times that backward (five); it reads q, k, v and writes o, and backward reads q, k, v,
o, dO and writes dq, dk, dv (4 and 12 tensors of [B, H, N, d]; the log-sum-exp rows are left out).
"""
BATCH = 16  # samples per call of the element-wise ops
ELEMENTWISE_DTYPES = ("float32", "bfloat16")
GPU_SIZES_MIB = (1, 16, 64, 256)  # MiB per tensor of the element-wise ops on a GPU
TENSORS_MOVED = {"ddim_step": 3, "addim_step": 3, "mcm_target": 4, "mcm_target_loss-fwd": 4,
                 "mcm_target_loss-fwd+bwd": 5}
ATTENTION_TOKENS = (256, 1024, 4096)  # 16x16 to 64x64 feature maps
ATTENTION_HEAD_DIMS = (64, 128)
ATTENTION_TOTAL_TOKENS = 65536  # batch x heads x tokens per call, enough to fill a GPU


def elementwise_numel(size_mib: int, itemsize: int) -> int:
    """Elements per tensor of a benchmark call of size_mib MiB, a multiple of BATCH."""
    return size_mib * 2**20 // itemsize // BATCH * BATCH


def elementwise_bytes(op: str, size_mib: int, itemsize: int) -> int:
    """Least bytes one call of op (a key of TENSORS_MOVED) moves."""
    return TENSORS_MOVED[op] * elementwise_numel(size_mib, itemsize) * itemsize


def attention_shape(tokens: int, head_dim: int, total_tokens: int = ATTENTION_TOTAL_TOKENS) -> tuple[int, ...]:
    """(batch, heads, tokens, head dim) of the attention benchmark: 8 heads of 64 or 4 of 128 (a width of 512)."""
    heads = 8 if head_dim == 64 else 4
    return max(1, total_tokens // (tokens * heads)), heads, tokens, head_dim


def attention_flops(shape: tuple[int, ...], backward: bool) -> float:
    """FLOPs of one attention call (forward, or forward and backward) on q, k, v of shape [B, H, N, d]."""
    batch, heads, tokens, head_dim = shape
    return 4 * batch * heads * tokens**2 * head_dim * (3.5 if backward else 1.0)


def attention_bytes(shape: tuple[int, ...], backward: bool, itemsize: int) -> int:
    """Least bytes one attention call (forward, or forward and backward) moves."""
    batch, heads, tokens, head_dim = shape
    return (12 if backward else 4) * batch * heads * tokens * head_dim * itemsize
