"""Record internal layers of any Flax Linen module by name (scio's ``Recorder`` for Flax).

Layer names are the module paths joined by dots, mirroring torch names: ``"l3"``,
``"l3.fc1"``, ``"ln1.ln"``, ``"fc"``. A name records that module's **output**; ``"name:input"``
records its first positional input. Recording uses ``flax.linen.intercept_methods`` on
``__call__``, so it works for any Linen model without changing it; only *submodules* can be
recorded (an inline ``x.mean(...)`` cannot: make it a module or ``sow`` it).

    net = RecordedNet(model, variables, ["l3", "avgpool", "fc"])
    logits, acts = net(x)            # acts: {"l3": [N, 32, 32, 48], "avgpool": ..., "fc": ...}
    jax.jit(lambda net, x: net.forward(x)[1]["l3"].mean())(net, x)  # a pytree: pass it to jit
    print(layer_table(model, variables, x[:1]))   # like scio's Recorder summary
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxuq._validate import check_finite  # the one validation module (kept importable here)

__all__ = ["LayerInfo", "layer_infos", "layer_table", "available_layers", "RecordedNet", "check_finite",
           "parse_spec"]


@dataclass(frozen=True)
class LayerInfo:
    name: str  # dotted module path
    type: str  # module class name
    depth: int
    input_shape: tuple
    output_shape: tuple
    params: int  # parameters owned directly by this module (not its children)


def _name(module) -> str:
    return ".".join(str(p) for p in module.path)


def _shape(x):
    return tuple(x.shape) if hasattr(x, "shape") else tuple(jax.tree.leaves(x)[0].shape) if x else ()


def _direct_params(variables, path) -> int:
    node = variables.get("params", {})
    for p in path:
        if not isinstance(node, dict) or p not in node:
            return 0
        node = node[p]
    if not isinstance(node, dict):
        return 0
    return int(sum(np.prod(v.shape) for v in node.values() if hasattr(v, "shape")))


def layer_infos(module: nn.Module, variables, x, method=None) -> list[LayerInfo]:
    """Every submodule call in execution order (shapes from an abstract trace; nothing runs)."""
    rows: dict[str, LayerInfo] = {}

    def interceptor(next_fun, args, kwargs, context):
        m = context.module
        name = _name(m)
        first = context.method_name == "__call__" and bool(m.path) and name not in rows
        if first:
            rows[name] = None  # reserve the slot: parents are listed before their children
        out = next_fun(*args, **kwargs)
        if first:
            rows[name] = LayerInfo(
                name=name,
                type=type(m).__name__,
                depth=len(m.path),
                input_shape=_shape(args[0]) if args else (),
                output_shape=_shape(out),
                params=_direct_params(variables, m.path),
            )
        return out

    def run(v, xx):
        with nn.intercept_methods(interceptor):
            return module.apply(v, xx, method=method)

    jax.eval_shape(run, variables, x)
    return list(rows.values())


def available_layers(module: nn.Module, variables, x) -> list[str]:
    return [r.name for r in layer_infos(module, variables, x)]


def layer_table(module: nn.Module, variables, x, *, recording: Sequence[str] = ()) -> str:
    """A scio-``Recorder``-style table: layer, type, input/output shapes, params, % of params."""
    from rich.console import Console
    from rich.table import Table

    rows = layer_infos(module, variables, x)
    total = int(sum(np.prod(v.shape) for v in jax.tree.leaves(variables.get("params", {}))))
    t = Table(title=f"Recordable layers of {type(module).__name__}")
    for col in ("Layer (path)", "Type", "Input shape", "Output shape", "Param #", "Param %"):
        t.add_column(col, justify="right" if col.startswith("Param") else "left")
    for r in rows:
        indent = "  " * (r.depth - 1)
        pct = f"{100 * r.params / total:.2f}%" if r.params and total else "--"
        t.add_row(indent + r.name, r.type, str(list(r.input_shape)), str(list(r.output_shape)),
                  f"{r.params:,}" if r.params else "--", pct)
    console = Console(width=140, record=True, force_terminal=False)
    with console.capture() as cap:
        console.print(t)
        console.print(f"Total params: {total:,}")
        console.print(f"Currently recording: {list(recording) if recording else None}")
    return cap.get()


def parse_spec(spec: str) -> tuple[str, str]:
    """``"name"`` -> ``("name", "output")``, ``"name:input"`` -> ``("name", "input")``; a layer spec
    that is not a string raises TypeError, an unknown suffix ValueError."""
    if not isinstance(spec, str):
        raise TypeError(f"layer specs must be strings like 'fc' or 'fc:input'; got {spec!r}")
    name, _, where = spec.partition(":")
    where = where or "output"
    if where not in ("output", "input"):
        raise ValueError(f"layer spec {spec!r}: suffix must be ':input' or ':output'")
    return name, where


@jax.tree_util.register_pytree_node_class
class RecordedNet:
    """A Flax model, its variables and the layers to record.

    A pytree: ``variables`` are its leaves, the module and the layer specs its static part, so a
    ``RecordedNet`` is an ordinary argument of a jitted function (:func:`forward` inside it), and two
    nets of the same module and layers share the compiled program.

    Args:
      module, variables: the Flax model and its variables (``module.apply(variables, x)``).
      layers: layer specs (``"name"`` = output, ``"name:input"`` = first input), in order.
      example: an input batch used to validate the names (defaults to validation on first call).
    """

    def __init__(self, module: nn.Module, variables, layers: Sequence[str] = (), example=None):
        self.module = module
        self.variables = variables
        self.layers = tuple(layers)
        self._specs = [parse_spec(s) for s in self.layers]
        self._validated = False
        if example is not None:
            self.validate(example)

    def tree_flatten(self):
        return (self.variables,), (self.module, self.layers)

    @classmethod
    def tree_unflatten(cls, aux, children):
        net = cls(aux[0], children[0], aux[1])
        net._validated = True  # rebuilt from a validated net (inside a transformation)
        return net

    def validate(self, x) -> None:
        """Check the layer names against the modules ``module`` calls on ``x[:1]`` (once per net; the
        abstract trace is :meth:`eval_shape`'s, cached per module, layers and input shape)."""
        if self._validated or not self.layers:
            self._validated = True
            return
        try:
            self.eval_shape(x[:1])
        except KeyError:  # a spec that no module call produced
            names = available_layers(self.module, self.variables, jnp.asarray(x[:1], jnp.float32))
            missing = [s for s, (n, _) in zip(self.layers, self._specs) if n not in names]
            if not missing:
                raise
            raise ValueError(
                f"unknown layer(s) {missing} for {type(self.module).__name__}; available layers: {names}"
            ) from None
        self._validated = True

    def eval_shape(self, x) -> tuple[jax.ShapeDtypeStruct, dict]:
        """Shapes of :meth:`forward` on inputs shaped like ``x`` (an array or a ShapeDtypeStruct,
        float32), without running it; cached per module, layers and input shape."""
        return _jitted_forward.eval_shape(self, jax.ShapeDtypeStruct(tuple(x.shape), jnp.float32))

    def forward(self, x, variables=None) -> tuple[jax.Array, dict]:
        """Un-jitted forward pass: logits ``[N, C]`` and ``{spec: activation [N, ...]}`` of ``x
        [N, ...]`` (NHWC), with ``variables`` in place of the net's own if given (GradNorm's
        per-sample gradients). Call it inside ``jax.jit`` (:meth:`__call__` is the jitted one)."""
        variables = self.variables if variables is None else variables
        if not self.layers:
            return self.module.apply(variables, x), {}
        acts: dict = {}

        def interceptor(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if context.method_name == "__call__" and context.module.path:
                name = _name(context.module)
                for spec, (n, w) in zip(self.layers, self._specs):
                    if n == name and spec not in acts:
                        acts[spec] = args[0] if w == "input" else out
            return out

        with nn.intercept_methods(interceptor):
            out = self.module.apply(variables, x)
        return out, {s: acts[s] for s in self.layers}

    def __call__(self, x):
        """Jitted :meth:`forward` of one batch: logits [N, C] and ``{spec: activation}``."""
        x = jnp.asarray(x, jnp.float32)
        self.validate(x)
        return _jitted_forward(self, x)

    def recorded_params(self, layers: Sequence[str] | None = None) -> dict:
        """``{layer name: params subtree}`` of the recorded layers (or of the specs ``layers``): the
        layers' own parameters, ``{}`` for parameter-free layers."""
        out = {}
        for spec in self.layers if layers is None else layers:
            n = parse_spec(spec)[0]
            node = self.variables.get("params", {})
            for p in n.split("."):
                node = node.get(p, {}) if isinstance(node, dict) else {}
            out[n] = node
        return out


_jitted_forward = jax.jit(lambda net, x: net.forward(x))
