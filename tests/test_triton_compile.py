"""The Triton kernels compile to H100 (sm_90) machine code, checked without a GPU with the
compiler and ptxas that ship with triton. The interpreter tests check what the kernels compute;
this catches what only the compiler rejects (it sees every constexpr branch, with native dtypes)."""

import pytest
import torch

triton = pytest.importorskip("triton")

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from skelmae_ext.triton import cosine_reconstruction_loss, masked_graph_conv  # noqa: E402

pytestmark = pytest.mark.skipif(
    bool(triton.knobs.runtime.interpret), reason="the kernels are interpreted in this process"
)

H100 = GPUTarget("cuda", 90, 32)
TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def compile_for_h100(kernel, types, constants):
    """The cubin of `kernel` for argument types {name: triton type} and constexprs (num_warps
    among them, as a launch passes it)."""
    constants = dict(constants)
    options = {"num_warps": constants.pop("num_warps")}
    signature = dict(types, **{name: "constexpr" for name in constants})
    source = ASTSource(fn=kernel, signature=signature, constexprs=constants)
    return triton.compile(source, target=H100, options=options).asm["cubin"]


@pytest.mark.parametrize("dtype", TYPES, ids=str)
def test_graph_conv_kernels_compile(dtype):
    data, mask = "*" + TYPES[dtype], "*i1"
    _, meta = masked_graph_conv._layout(torch.empty(100, 17, 64, device="meta"))
    lists = {"index_ptr": "*i32", "weight_ptr": "*fp32", "degree_ptr": "*i32"}
    sizes = {"num_graphs": "i32", "channels": "i32"}
    assert compile_for_h100(
        masked_graph_conv._neighbour_lists_kernel,
        {"adjacency_ptr": mask, "stride_v": "i32", "stride_u": "i32", **lists},
        {"JOINTS": 17, "BLOCK_V": 32, "num_warps": 4},
    )
    assert compile_for_h100(
        masked_graph_conv._graph_conv_forward_kernel,
        {"x_ptr": data, "mask_ptr": mask, "token_ptr": data, **lists, "eps_ptr": "*fp32", "y_ptr": data, **sizes},
        dict(meta, HAS_MASK=True),
    )
    assert compile_for_h100(
        masked_graph_conv._graph_conv_backward_kernel,
        {"grad_y_ptr": data, "x_ptr": data, "mask_ptr": mask, "token_ptr": data, **lists,
         "eps_ptr": "*fp32", "grad_x_ptr": data, "token_partial_ptr": "*fp64", "eps_partial_ptr": "*fp64", **sizes},
        dict(meta, HAS_MASK=True, GRAD_X=True, GRAD_TOKEN=True, GRAD_EPS=True),
    )


@pytest.mark.parametrize("dtype", TYPES, ids=str)
@pytest.mark.parametrize("int_beta", [2, 0])
def test_loss_kernels_compile(dtype, int_beta):
    data = "*" + TYPES[dtype]
    block_r, block_c = cosine_reconstruction_loss._blocks(64)
    blocks = {"BLOCK_R": block_r, "BLOCK_C": block_c, "num_warps": cosine_reconstruction_loss.NUM_WARPS}
    sizes = {"num_rows": "i32", "channels": "i32"}
    assert compile_for_h100(
        cosine_reconstruction_loss._cosine_loss_forward_kernel,
        {"pred_ptr": data, "target_ptr": data, "mask_ptr": "*i1", "row_weight_ptr": "*fp32",
         "loss_ptr": "*fp64", "grad_pred_ptr": data, "grad_target_ptr": data, **sizes, "beta": "fp32"},
        dict(blocks, INT_BETA=int_beta, HAS_MASK=True, PER_ROW=False, GRAD_PRED=True, GRAD_TARGET=True),
    )
    assert compile_for_h100(
        cosine_reconstruction_loss._scale_rows_kernel,
        {"grad_output_ptr": data, "grad_pred_ptr": data, "grad_target_ptr": data,
         "out_pred_ptr": data, "out_target_ptr": data, **sizes},
        dict(blocks, ROW_STRIDE=1, PRED=True, TARGET=True),
    )
