"""One declarative way to define an op. Everything that is the same for every op lives here.

How to add an op ``foo`` (the whole recipe; see ``composite.py`` for a differentiable op and
``ray_aabb_intersect.py`` for one without gradients):

1. Maths: ``csrc/include/pyengine/foo.h`` (``PE_HD`` per-element functions), a CPU loop in
   ``csrc/cpu/foo.cpp``, a CUDA kernel and typed launcher in ``csrc/cuda/foo.cu``, one host
   function per kernel in ``csrc/host/foo.cpp`` built on ``run_on_device`` (csrc/host/common.h)
   and one ``m.def`` per kernel in ``csrc/ext.cpp``. Optionally a Triton module ``kernels/foo.py``.
2. Reference: ``pyengine/reference/foo.py``, plain differentiable PyTorch, the specification.
3. Kernels: every backend is a namespace (a module or object) with one function per kernel,
   named ``foo_fwd`` / ``foo_bwd`` (``foo`` alone for an op without gradients), all with the
   same arguments: the forward schema's. A backward kernel takes
   ``(*grads_of_outputs, *forward_args, *saved_outputs, *needs)`` and returns one gradient (or
   None) per differentiable input. A backend without a backward kernel, the reference among
   them, gets one derived from the reference forward by ``torch.func.vjp``.
4. Registration, in ``pyengine/ops/foo.py``::

       OP = define("foo", "(Tensor x, float s) -> Tensor", grads=("x",),
                   fake=lambda x, s: torch.empty_like(x),
                   reference=_ref_namespace, cpu=True, cuda=True, triton="pyengine.kernels.foo")

   and a public function that checks its inputs with ``check("foo", SPECS, {"x": x, ...})`` (a
   dict of ``T(dtypes, "S C")`` tensor specs: dtypes, shapes with symbols, one device; then the
   arguments by name, spelled out: Dynamo before torch 2.13 cannot trace ``locals()``) plus any value
   ranges, then calls ``OP(*args, backend=backend)``.
5. Tests: ``tests/ops/test_foo.py`` declares cases and tolerances for ``tests/op_harness.py``,
   which runs every backend against the reference forward and backward, empty and odd sizes,
   bad inputs, ``opcheck``, ``torch.compile`` and the GPU variants.

What ``define`` does for you: the ``torch.ops.pyengine.*`` custom ops (a ``str backend``
argument appended to each schema), their fake kernels, the autograd wiring (including
``needs_input_grad`` and zero-filling of unused output gradients), the derived reference
backward, and the backend choice through ``_dispatch`` with its error messages.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils import _python_dispatch

from pyengine import _ext
from pyengine.ops import _dispatch

FLOAT = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
F32_F64 = (torch.float32, torch.float64)
F32 = (torch.float32,)
INDEX = (torch.int32, torch.int64)
BOOL = (torch.bool,)

_DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32",
                torch.float64: "float64", torch.int32: "int32", torch.int64: "int64", torch.bool: "bool"}


# Input checks from tensor specs ------------------------------------------------------------------

@dataclass(frozen=True)
class T:
    """Spec of one tensor argument: allowed dtypes and a shape such as ``"R 2"``, ``"S C"``,
    ``"... D"`` (any leading batch dims) or ``""`` (a scalar tensor). Upper-case names are
    symbols bound by the first tensor that has them; numbers are fixed sizes."""

    dtypes: tuple
    shape: str
    optional: bool = False


def _dtype_list(dtypes) -> str:
    names = [_DTYPE_NAMES.get(d, str(d)) for d in dtypes]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


@functools.cache
def _parse_shape(shape: str) -> tuple[bool, tuple[str, ...]]:
    dims = shape.split()
    batch = bool(dims) and dims[0] == "..."
    return batch, tuple(dims[1:] if batch else dims)


def check(op: str, specs: dict[str, T], args: dict, **sizes: int) -> dict[str, int]:
    """Checks ``args[name]`` against ``specs[name]`` for every spec; returns the bound symbols.

    Raises TypeError (not a tensor, wrong dtype) or ValueError (shape, device) naming the
    argument, the expected shape with the symbols bound so far, and what was passed.
    ``sizes`` pre-binds symbols (e.g. ``D=cfg.n_input_dims``).
    """
    bound = dict(sizes)
    source = {k: "the config" for k in sizes}
    device, device_of = None, None
    for name, spec in specs.items():
        t = args[name]
        if t is None and spec.optional:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in spec.dtypes:
            raise TypeError(f"{op}: {name} must be {_dtype_list(spec.dtypes)}, got {t.dtype}")
        batch, dims = _parse_shape(spec.shape)
        shape = tuple(t.shape)
        ok = len(shape) >= len(dims) if batch else len(shape) == len(dims)
        got = shape[len(shape) - len(dims):] if ok else ()
        pending = {}
        for d, n in zip(dims, got):
            want = int(d) if d.isdigit() else bound.get(d, pending.get(d))
            if want is None:
                pending[d] = n
            elif want != n:
                ok = False
        if not ok:
            known = [f"{d} = {bound[d]} (from {source[d]})" for d in dict.fromkeys(dims) if d in bound]
            want = "[" + ", ".join((["..."] if batch else []) + list(dims)) + "]"
            raise ValueError(f"{op}: {name} must be {want}{' with ' + ', '.join(known) if known else ''}, "
                             f"got shape {shape}")
        for d, n in pending.items():
            bound[d], source[d] = n, name
        if device is None:
            device, device_of = t.device, name
        elif t.device != device:
            raise ValueError(f"{op}: {name} is on {t.device} but {device_of} is on {device}")
    return bound


# Backends ----------------------------------------------------------------------------------------

def _import(module: str):
    return lambda: importlib.import_module(module)


def _float_dtypes(args) -> tuple:
    return tuple({a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()})


def _triton_check(dtypes_ok):
    def check_(device, dtypes=()):
        reason = _dispatch.check_triton(device)
        if reason is None and any(d not in dtypes_ok for d in dtypes):
            reason = (f"computes in {_dtype_list(dtypes_ok)}; {_dtype_list(dtypes)} inputs need the cpu, cuda "
                      "or reference backend")
        return reason
    return check_


# The op ------------------------------------------------------------------------------------------

class Op:
    """A registered op: call it with the forward kernel's arguments and ``backend=``."""

    def __init__(self, name: str, schema: str, *, fake: Callable, reference: object, grads: tuple = (),
                 save: tuple = (), cpu: bool = False, cuda: bool = False, triton: str | None = None,
                 triton_dtypes: tuple = F32, gpu_order: tuple | None = None):
        self.name, self.grads, self.save = name, tuple(grads), tuple(save)
        self.fwd_name = f"{name}_fwd" if grads else name
        self.bwd_name = f"{name}_bwd"
        self.reference = reference
        parsed = torch._C.parse_schema(f"pyengine::{self.fwd_name}{schema}")
        self.arg_names = [a.name for a in parsed.arguments]
        self.n_out = len(parsed.returns)
        self.grad_idx = [self.arg_names.index(g) for g in self.grads]
        self.single = schema.rsplit("->", 1)[1].strip() == "Tensor"
        self._is_tensor = [str(a.type) in ("Tensor", "Optional[Tensor]") for a in parsed.arguments]

        _dispatch.register(name, "reference", lambda device, dtypes=(): None, lambda: reference)
        if cpu:
            _dispatch.register(name, "cpu", lambda device, dtypes=(): _dispatch.check_cpu_ext(device), _ext.load)
        if cuda:
            _dispatch.register(name, "cuda", lambda device, dtypes=(): _dispatch.check_cuda_ext(device), _ext.load)
        if triton:
            _dispatch.register(name, "triton", _triton_check(triton_dtypes), _import(triton))
        if gpu_order:
            _dispatch.set_order(name, "cuda", gpu_order)

        self.fwd = self.kernel(self.fwd_name, schema, fake)
        if self.grads:
            self._define_backward(parsed, schema)

    # -- custom ops -------------------------------------------------------------------------------
    def kernel(self, kernel_name: str, schema: str, fake: Callable, derive: Callable | None = None,
               post: Callable | None = None):
        """Registers ``torch.ops.pyengine.<kernel_name>`` (schema plus ``str backend``): it runs
        the named kernel of the chosen backend, or ``derive(*args)`` where the backend has none."""
        args, ret = schema.rsplit("->", 1)
        full = args.strip()[:-1] + (", " if args.strip() != "()" else "") + "str backend) -> " + ret.strip()
        op = self

        def impl(*args):
            *args, backend = args
            b = _dispatch.select(op.name, _device(args), None if backend == "auto" else backend,
                                 dtypes=_float_dtypes(args))
            fn = getattr(b.impl(), kernel_name, None)
            if fn is None:
                if derive is None:
                    raise _dispatch.BackendError(f"{op.name}: backend {b.name!r} has no {kernel_name} kernel")
                fn = derive
            out = fn(*args)
            return post(args, out) if post is not None else out

        custom = torch.library.custom_op(f"pyengine::{kernel_name}", impl, mutates_args=(), schema=full)
        custom.register_fake(lambda *args: fake(*args[:-1]))
        return getattr(torch.ops.pyengine, kernel_name)

    def _define_backward(self, parsed, schema: str):
        # bwd(*grads_of_outputs, *tensor_args, *saved_outputs, *other_args, *needs)
        is_t = [str(a.type) in ("Tensor", "Optional[Tensor]") for a in parsed.arguments]
        order = [i for i, t in enumerate(is_t) if t] + [i for i, t in enumerate(is_t) if not t]
        n_t, n_out, n_args, n_saved = sum(is_t), self.n_out, len(is_t), len(self.save)
        texts = [a.strip() for a in schema.rsplit("->", 1)[0].strip()[1:-1].split(",")]
        args = [texts[i] for i in order]
        schema = "({}) -> ({})".format(", ".join(
            [f"Tensor g_{i}" for i in range(n_out)] + args[:n_t] + [f"Tensor saved_{i}" for i in self.save]
            + args[n_t:] + [f"bool need_{g}" for g in self.grads]), ", ".join("Tensor" for _ in self.grads))
        one = len(self.grads) == 1  # a schema's "-> (Tensor)" is one tensor, not a tuple
        unpack = (lambda t: t[0]) if one else (lambda t: t)
        op = self

        def forward_args(args):
            """(forward arguments in schema order, needs) from the backward kernel's arguments."""
            flat = args[n_out:n_out + n_t] + args[n_out + n_t + n_saved:n_out + n_saved + n_args]
            fwd = [None] * n_args
            for pos, a in zip(order, flat):
                fwd[pos] = a
            return fwd, args[n_out + n_saved + n_args:]

        def fake(*args):
            fwd, needs = forward_args(args)
            return unpack(tuple(torch.empty_like(fwd[i]) if need else fwd[i].new_empty(0)
                                for i, need in zip(op.grad_idx, needs)))

        def post(args, got):
            # a custom op returns tensors: a gradient not asked for is an empty tensor, one asked
            # for but absent (e.g. of a [S, 0] input) is zeros
            fwd, needs = forward_args(args)
            got = (got,) if isinstance(got, torch.Tensor) else tuple(got)
            return unpack(tuple((g if g is not None else torch.zeros_like(fwd[i])) if need else fwd[i].new_empty(0)
                                for i, need, g in zip(op.grad_idx, needs, got)))

        def derive(*args):
            fwd, needs = forward_args(args)
            return op.reference_backward(args[:n_out], fwd, needs)

        bwd = self.bwd_op = self.kernel(self.bwd_name, schema, fake, derive=derive, post=post)

        def setup_context(ctx, inputs, output):
            outputs = (output,) if op.single else output
            ctx.is_tensor = is_t + [False]  # the backend name comes last
            ctx.save_for_backward(*[a for a, t in zip(inputs, ctx.is_tensor) if t],
                                  *[outputs[i] for i in op.save])
            ctx.scalars = [None if t else a for a, t in zip(inputs, ctx.is_tensor)]
            ctx.out_meta = [(o.shape, o.dtype, o.device) for o in outputs]

        def backward(ctx, *grads):
            needs = [ctx.needs_input_grad[i] for i in op.grad_idx]
            if not any(needs):
                return (None,) * len(ctx.scalars)
            saved = iter(ctx.saved_tensors)
            inputs = [next(saved) if t else a for a, t in zip(ctx.scalars, ctx.is_tensor)]
            grads = [g.contiguous() if g is not None else torch.zeros(s, dtype=dt, device=dv)
                     for g, (s, dt, dv) in zip(grads, ctx.out_meta)]
            fwd, backend = inputs[:-1], inputs[-1]
            tensors = [a for a, t in zip(fwd, ctx.is_tensor) if t]
            others = [a for a, t in zip(fwd, ctx.is_tensor) if not t]
            got = bwd(*grads, *tensors, *saved, *others, *needs, backend)
            got = (got,) if isinstance(got, torch.Tensor) else got
            result = [None] * len(inputs)
            for i, need, g in zip(op.grad_idx, needs, got):
                result[i] = g if need else None
            return tuple(result)

        torch.library.register_autograd(f"pyengine::{self.fwd_name}", backward, setup_context=setup_context)

    # -- the derived backward ---------------------------------------------------------------------
    def reference_backward(self, grads, fwd, needs):
        """Backward of any backend from the reference forward by ``torch.func.vjp``.

        torch.func rather than torch.autograd: this runs inside the custom op, below the autograd
        dispatch key, where the tape would record nothing."""
        ref_fwd = getattr(self.reference, self.fwd_name)
        floating = []

        def f(*diff):
            a = list(fwd)
            for i, t in zip(self.grad_idx, diff):
                a[i] = t
            out = ref_fwd(*a)
            if self.single:
                return out
            # integer outputs (indices, counts) carry no gradient, and vjp accepts none
            floating[:] = [o.is_floating_point() for o in out]
            return tuple(o for o in out if o.is_floating_point())

        primal, vjp = torch.func.vjp(f, *[fwd[i] for i in self.grad_idx])
        if self.single:
            out = vjp(grads[0].to(primal.dtype))
        else:
            grads = [g for g, fl in zip(grads, floating) if fl]
            out = vjp(tuple(g.to(p.dtype) for g, p in zip(grads, primal)))
        return tuple(g if need else None for g, need in zip(out, needs))

    def double_backward(self, backward: Callable, setup_context: Callable) -> None:
        """Makes the backward kernel differentiable (e.g. hash_encode's analytic normals)."""
        torch.library.register_autograd(f"pyengine::{self.bwd_name}", backward, setup_context=setup_context)

    def __call__(self, *args, backend: str | None = None):
        """Runs the forward kernel on ``backend`` (resolved here, so errors surface at the call
        and the backward runs on the same backend).

        Plain eager calls skip the custom op: the kernels run straight from an
        ``autograd.Function`` (``_Eager``), which costs a fraction of the custom op's dispatch.
        Under ``torch.compile``, functorch transforms, dispatch modes (fake tensors) or with
        tensor subclasses, the call goes through ``torch.ops.pyengine.*``."""
        b = _dispatch.select(self.name, _device(args), backend, dtypes=_float_dtypes(args))
        if not _plain_eager(args):
            return self.fwd(*args, b.name)
        if not (self.grads and torch.is_grad_enabled() and any(
                isinstance(args[i], torch.Tensor) and args[i].requires_grad for i in self.grad_idx)):
            return getattr(b.impl(), self.fwd_name)(*args)  # nothing to differentiate
        return _Eager.apply(self, b, *args)

    # -- the eager path ---------------------------------------------------------------------------
    def eager_backward(self, b, grads, fwd, saved, needs):
        """The backward kernel of backend b called directly (or the derived one), with the custom
        op's conventions: a gradient not needed is None, one needed but absent is zeros."""
        kernel = getattr(b.impl(), self.bwd_name, None)
        if kernel is None:
            got = self.reference_backward(grads, fwd, needs)
        else:
            tensors = [a for a, t in zip(fwd, self._is_tensor) if t]
            others = [a for a, t in zip(fwd, self._is_tensor) if not t]
            got = kernel(*grads, *tensors, *saved, *others, *needs)
        got = (got,) if isinstance(got, torch.Tensor) or got is None else tuple(got)
        return [(g if g is not None else torch.zeros_like(fwd[i])) if need else None
                for i, need, g in zip(self.grad_idx, needs, got)]


class _Eager(torch.autograd.Function):
    """An op's forward and backward kernels on one backend, for plain eager calls (``Op.__call__``).

    The backward runs the kernel directly; when the graph of the backward is being recorded
    (``create_graph=True``), it calls the registered backward op instead, which carries the
    op's double backward (hash_encode's analytic normals)."""

    @staticmethod
    def forward(ctx, op, b, *args):
        out = getattr(b.impl(), op.fwd_name)(*args)
        outs = (out,) if op.single else tuple(out)
        ctx.op, ctx.b = op, b
        ctx.set_materialize_grads(False)
        ctx.is_tensor = [isinstance(a, torch.Tensor) for a in args]
        ctx.scalars = [None if t else a for a, t in zip(args, ctx.is_tensor)]
        ctx.save_for_backward(*[a for a in args if isinstance(a, torch.Tensor)], *[outs[i] for i in op.save])
        ctx.out_meta = [(o.shape, o.dtype, o.device) for o in outs]
        ctx.mark_non_differentiable(*[o for o in outs if not o.is_floating_point()])
        return out

    @staticmethod
    def backward(ctx, *grads):
        op = ctx.op
        needs = [ctx.needs_input_grad[2 + i] for i in op.grad_idx]
        none = (None,) * (2 + len(ctx.scalars))
        if not any(needs):
            return none
        it = iter(ctx.saved_tensors)
        fwd = [next(it) if t else a for a, t in zip(ctx.scalars, ctx.is_tensor)]
        outs_saved = list(it)
        grads = [g.contiguous() if g is not None else torch.zeros(s, dtype=dt, device=dv)
                 for g, (s, dt, dv) in zip(grads, ctx.out_meta)]
        if torch.is_grad_enabled():  # create_graph: the registered op records its own backward
            tensors = [a for a, t in zip(fwd, op._is_tensor) if t]
            others = [a for a, t in zip(fwd, op._is_tensor) if not t]
            got = op.bwd_op(*grads, *tensors, *outs_saved, *others, *needs, ctx.b.name)
            got = (got,) if isinstance(got, torch.Tensor) else got
            got = [g if need else None for g, need in zip(got, needs)]
        else:
            got = op.eager_backward(ctx.b, grads, fwd, outs_saved, needs)
        result = list(none)
        for i, g in zip(op.grad_idx, got):
            result[2 + i] = g
        return tuple(result)


_custom_op_only = [False]


@contextlib.contextmanager
def custom_op_only():
    """Within it every op call goes through its ``torch.ops.pyengine.*`` custom op, as under
    ``torch.compile`` (the tests compare the two paths)."""
    before = _custom_op_only[0]
    _custom_op_only[0] = True
    try:
        yield
    finally:
        _custom_op_only[0] = before


def _plain_eager(args) -> bool:
    """True for a call that the eager path can take: no compile tracing, no functorch transform,
    no dispatch mode, and only plain tensors (or parameters) on the CPU or a GPU."""
    if _custom_op_only[0] or torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return False
    if _python_dispatch._get_current_dispatch_mode() is not None:
        return False
    for a in args:
        if isinstance(a, torch.Tensor):
            if type(a) is not torch.Tensor and type(a) is not torch.nn.Parameter:
                return False
            if a.device.type not in ("cpu", "cuda"):
                return False
    return True


def _device(args) -> torch.device:
    for a in args:
        if isinstance(a, torch.Tensor):
            return a.device
    return torch.device("cpu")


def define(name: str, schema: str, **kw) -> Op:
    """Defines and registers op ``name``; see the module docstring."""
    return Op(name, schema, **kw)

