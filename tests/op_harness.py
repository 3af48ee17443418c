"""The shared test harness of every op (tests/ops/test_<op>.py declares, this file runs).

An op's test file builds an ``OpSuite``: the public function, its cases (each a seeded input
maker), tolerances per dtype, the differentiable arguments, and bad inputs with the error they
must raise; ``suite.tests()`` returns the test functions to put in the module's globals. They run:

* every backend of the op against the reference, forward and backward (random upstream
  gradients on every floating output), on every case: odd sizes, batch dims, empty inputs;
* low precision by FlashAttention's rule: a backend's error against the float64 reference is at
  most ``LOW_PRECISION_FACTOR`` times the error of the reference run in the same low precision;
* ``gradcheck`` in float64 of the reference and the cpu backend;
* the bad inputs (type and message);
* ``torch.library.opcheck`` on the registered kernels, and ``torch.compile`` (fullgraph through
  the fake kernels, ``aot_eager``) against eager;
* the GPU variants: the cuda and triton backends on CUDA tensors (marked ``gpu``, skipped without
  a GPU). Without a GPU, Triton runs on CPU tensors under its interpreter.

Seeds are fixed per case and printed in every failure, with the max and mean differences.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch

from pyengine.ops import _define, _dispatch
from tests.helpers import assert_close

HAS_CUDA = torch.cuda.is_available()
LOW = (torch.float16, torch.bfloat16)
LOW_PRECISION_FACTOR = 2.0


@dataclass
class Case:
    """make(generator, dtype, device) -> (args, kwargs) of the public function."""

    name: str
    make: Callable
    dtypes: tuple = (torch.float32, torch.float64)
    triton: bool = True  # small enough for Triton's interpreter
    cpu: bool = True  # False: only for GPU backends (too slow for the CPU reference)
    seed: int | None = None

    def __post_init__(self):
        if self.seed is None:
            self.seed = zlib.crc32(self.name.encode()) % 2**31

    def inputs(self, dtype, device):
        return self.make(torch.Generator().manual_seed(self.seed), dtype, device)


@dataclass
class Bad:
    """An input that must be rejected: mutate(args, kwargs) -> (args, kwargs)."""

    name: str
    mutate: Callable
    error: type
    match: str


def change(key, f):
    """A ``Bad.mutate`` that replaces one argument (a position or a keyword) by ``f(old)``."""
    def mutate(args, kwargs):
        if isinstance(key, int):
            args[key] = f(args[key])
        else:
            kwargs[key] = f(kwargs.get(key))
        return args, kwargs
    return mutate


@dataclass
class OpSuite:
    definition: object  # the op's ``_define.Op``
    fn: Callable  # the public function, taking backend=
    cases: list
    grads: tuple = ()  # names (kwargs) or positions (args) of the differentiable inputs
    tol: dict = field(default_factory=dict)  # dtype -> (atol, rtol), atol relative to max |ref|
    base: Callable | None = None  # (generator, device) -> (args, kwargs) for bad inputs and opcheck
    bad: list = field(default_factory=list)
    compile: bool = True
    compile_kwargs: dict = field(default_factory=dict)  # e.g. skip a value check that syncs
    gradcheck_case: str | None = None

    @property
    def op(self) -> str:
        return self.definition.name

    # -- plumbing ---------------------------------------------------------------------------------
    def backends(self):
        """(backend, device) pairs to compare with the reference; GPU ones marked."""
        have = _dispatch._registry[self.op]
        out = []
        for b in ("cpu", "triton", "cuda"):
            if b not in have:
                continue
            if b == "cpu":
                out.append(pytest.param("cpu", "cpu", id="cpu"))
            elif b == "triton" and not HAS_CUDA and _dispatch.triton_interpret():
                out.append(pytest.param("triton", "cpu", id="triton-interpret"))
            else:
                out.append(pytest.param(b, "cuda", id=f"{b}-gpu", marks=pytest.mark.gpu))
        return out

    def _run(self, backend, args, kwargs, upstream_seed):
        """(flat outputs, grads of the differentiable inputs) with seeded random upstream grads."""
        args, kwargs = list(args), dict(kwargs)
        leaves = []
        for k in self.grads:
            src = kwargs if isinstance(k, str) else args
            if isinstance(k, str) and k not in kwargs:
                leaves.append(None)
                continue
            if src[k] is not None:
                src[k] = src[k].detach().clone().requires_grad_()
                leaves.append(src[k])
            else:
                leaves.append(None)
        out = _flat(self.fn(*args, backend=backend, **kwargs))
        live = [t for t in leaves if t is not None]
        floats = [o for o in out if o.is_floating_point() and o.requires_grad]
        grads = [None] * len(leaves)
        if live and floats:
            g = torch.Generator().manual_seed(upstream_seed)
            ups = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o) for o in floats]
            got = iter(torch.autograd.grad(floats, live, ups, allow_unused=True))
            grads = [next(got) if t is not None else None for t in leaves]
            grads = [torch.zeros_like(t) if (t is not None and gr is None) else gr for t, gr in zip(leaves, grads)]
        return [o.detach() for o in out], grads

    def _compare(self, got, want, dtype, what):
        atol, rtol = self.tol.get(dtype, (1e-5, 1e-4))
        (out, grads), (rout, rgrads) = got, want
        assert len(out) == len(rout), what
        for i, (a, b) in enumerate(zip(out, rout)):
            _close(a, b, atol, rtol, f"{what} output {i}")
        for k, a, b in zip(self.grads, grads, rgrads):
            if b is None:
                assert a is None, f"{what} grad of {k}"
            else:
                _close(a, b, atol, rtol, f"{what} grad of {k}")

    # -- the tests --------------------------------------------------------------------------------
    def tests(self) -> dict:
        suite = self
        cases = [pytest.param(c, id=c.name) for c in self.cases]
        backends = self.backends()
        tests = {}

        @pytest.mark.parametrize("backend,device", backends)
        @pytest.mark.parametrize("case", cases)
        def test_backend_matches_reference(backend, device, case):
            if backend == "triton" and device == "cpu" and not case.triton:
                pytest.skip("too large for Triton's interpreter")
            if device == "cpu" and not case.cpu:
                pytest.skip("a GPU-sized case")
            for dtype in case.dtypes:
                if dtype in LOW:
                    continue
                args, kwargs = case.inputs(dtype, device)
                what = f"{suite.op} backend={backend} case={case.name} seed={case.seed} dtype={dtype}"
                try:
                    got = suite._run(backend, args, kwargs, case.seed + 1)
                except _dispatch.BackendError as exc:
                    if backend == "triton" and dtype == torch.float64:
                        continue  # Triton kernels compute in float32 and say so (a bad-input case)
                    raise AssertionError(f"{what}: {exc}") from exc
                want = suite._run("reference", args, kwargs, case.seed + 1)
                suite._compare(got, want, dtype, what)

        tests["test_backend_matches_reference"] = test_backend_matches_reference

        @pytest.mark.parametrize("backend,device", backends)
        def test_custom_op_path_matches_eager(backend, device):
            """Eager calls run the kernels from an autograd.Function; torch.compile and the
            functorch transforms go through the registered custom ops: both give the same
            outputs and gradients (bit for bit on the CPU)."""
            case = next((c for c in suite.cases if c.cpu and (c.triton or backend != "triton")), None)
            if case is None:
                pytest.skip("no case small enough")
            dtype = torch.float32 if torch.float32 in case.dtypes else case.dtypes[0]
            args, kwargs = case.inputs(dtype, device)
            eager = suite._run(backend, args, kwargs, case.seed + 1)
            with _define.custom_op_only():
                custom = suite._run(backend, args, kwargs, case.seed + 1)
            what = f"{suite.op} backend={backend} case={case.name}: custom op path against eager"
            # bit for bit on the CPU; on a GPU, backward kernels that sum with atomics round in
            # whatever order the threads arrive, so two runs of either path differ in the last bits
            atol, rtol = (0, 0) if device == "cpu" else suite.tol.get(dtype, (1e-5, 1e-4))
            for name, a, b in zip(_names(eager), _items(eager), _items(custom)):
                assert (a is None) == (b is None), f"{what} {name}"
                if a is not None:
                    _close(a, b, atol, rtol, f"{what} {name}")

        tests["test_custom_op_path_matches_eager"] = test_custom_op_path_matches_eager

        low_cases = [pytest.param(c, d, id=f"{c.name}-{str(d)[6:]}") for c in self.cases for d in c.dtypes if d in LOW]
        if low_cases:
            @pytest.mark.parametrize("backend,device", backends)
            @pytest.mark.parametrize("case,dtype", low_cases)
            def test_low_precision_error_within_twice_the_reference(backend, device, case, dtype):
                if backend == "triton" and device == "cpu" and not case.triton:
                    pytest.skip("too large for Triton's interpreter")
                if device == "cpu" and not case.cpu:
                    pytest.skip("a GPU-sized case")
                args, kwargs = case.inputs(dtype, device)
                what = f"{suite.op} backend={backend} case={case.name} seed={case.seed} dtype={dtype}"
                got = suite._run(backend, args, kwargs, case.seed + 1)
                low = suite._run("reference", args, kwargs, case.seed + 1)
                exact = suite._run("reference", *_to64(args, kwargs), case.seed + 1)
                floor = suite.tol.get(dtype, (1e-6, 0))[0]
                for name, g, lo, ex in zip(_names(got), _items(got), _items(low), _items(exact)):
                    if ex is None or not ex.is_floating_point():
                        continue
                    scale = max(1.0, ex.abs().max().item()) if ex.numel() else 1.0
                    e_got = (g.double() - ex.double()).abs().max().item() if ex.numel() else 0.0
                    e_ref = (lo.double() - ex.double()).abs().max().item() if ex.numel() else 0.0
                    assert e_got <= LOW_PRECISION_FACTOR * e_ref + floor * scale, (
                        f"{what} {name}: max error {e_got:.3e} against float64, reference in {dtype}: "
                        f"{e_ref:.3e} (allowed {LOW_PRECISION_FACTOR} x that + {floor * scale:.1e})")

            tests["test_low_precision_error_within_twice_the_reference"] = (
                test_low_precision_error_within_twice_the_reference)

        if self.grads and self.gradcheck_case:
            case = next(c for c in self.cases if c.name == self.gradcheck_case)

            @pytest.mark.parametrize("backend", ["reference", "cpu"])
            def test_gradcheck_float64(backend):
                args, kwargs = case.inputs(torch.float64, "cpu")
                args, kwargs = list(args), dict(kwargs)
                keys = [k for k in self.grads if (kwargs.get(k) if isinstance(k, str) else args[k]) is not None]
                leaves = [(kwargs if isinstance(k, str) else args)[k].detach().clone().requires_grad_() for k in keys]

                def f(*xs):
                    a, kw = list(args), dict(kwargs)
                    for k, x in zip(keys, xs):
                        (kw if isinstance(k, str) else a)[k] = x
                    return tuple(o for o in _flat(suite.fn(*a, backend=backend, **kw)) if o.is_floating_point())

                ok = torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-5)
                assert ok, f"{suite.op} {backend} seed={case.seed}"

            tests["test_gradcheck_float64"] = test_gradcheck_float64

        if self.bad:
            @pytest.mark.parametrize("bad", [pytest.param(b, id=b.name) for b in self.bad])
            def test_bad_input_raises_a_clear_error(bad):
                args, kwargs = suite.base(torch.Generator().manual_seed(0), "cpu")
                args, kwargs = bad.mutate(list(args), dict(kwargs))
                with pytest.raises(bad.error, match=bad.match):
                    suite.fn(*args, **kwargs)

            tests["test_bad_input_raises_a_clear_error"] = test_bad_input_raises_a_clear_error

        @pytest.mark.parametrize("backend", ["reference", "cpu"])
        def test_opcheck(backend):
            calls = _record_forward_call(suite, backend)
            assert len(calls) == 1, f"{suite.op}: expected one forward kernel call, got {len(calls)}"
            args = [a.detach().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point()
                    and suite.definition.grads else a for a in calls[0]]
            torch.library.opcheck(getattr(torch.ops.pyengine, suite.definition.fwd_name).default, tuple(args))

        tests["test_opcheck"] = test_opcheck

        if self.compile:
            def test_torch_compile_matches_eager():
                torch._dynamo.reset()
                args, kwargs = suite.base(torch.Generator().manual_seed(1), "cpu")
                kwargs = {**kwargs, **suite.compile_kwargs}
                eager = _flat(suite.fn(*args, backend="cpu", **kwargs))
                compiled = torch.compile(lambda *a: suite.fn(*a, backend="cpu", **kwargs), backend="aot_eager",
                                         fullgraph=True)
                with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):  # ray_march's sizes
                    got = _flat(compiled(*args))
                for i, (a, b) in enumerate(zip(got, eager)):
                    _close(a, b, 0, 0, f"{suite.op} compiled output {i}")

            tests["test_torch_compile_matches_eager"] = test_torch_compile_matches_eager
        return tests


def _flat(out) -> list:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for t in out]


def _names(run):
    out, grads = run
    return [f"output {i}" for i in range(len(out))] + [f"grad {i}" for i in range(len(grads))]


def _items(run):
    out, grads = run
    return list(out) + list(grads)


def _to64(args, kwargs):
    c = lambda t: t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t  # noqa: E731
    return [c(a) for a in args], {k: c(v) for k, v in kwargs.items()}


def _close(a, b, atol, rtol, what):
    if not a.is_floating_point():
        assert a.dtype == b.dtype and torch.equal(a.cpu(), b.cpu()), f"{what}: integer outputs differ"
        return
    scale = max(1.0, b.abs().max().item()) if b.numel() else 1.0
    assert_close(a.cpu(), b.cpu(), atol=atol * scale, rtol=rtol, what=what)


def _record_forward_call(suite, backend):
    """The arguments (backend included) of the forward custom-op call the public function makes."""
    calls, op, real = [], suite.definition, suite.definition.fwd

    def spy(*args):
        calls.append(list(args))
        return real(*args)

    op.fwd = spy
    try:
        args, kwargs = suite.base(torch.Generator().manual_seed(2), "cpu")
        with _define.custom_op_only():
            suite.fn(*args, backend=backend, **kwargs)
    finally:
        op.fwd = real
    return calls
