"""Lockstep training parity: jaxuq and TU 0.13.0 from the same weights on the same batches, every step's loss.

Each method starts from TU's own initialisation (TU's factory under ``torch.manual_seed(seed)``), converted
to jaxuq by ``converters``; both sides then see the same batches in the same order, the order of
``jaxuq.train.fit`` (``epoch_permutation(data_key, 0, N)``, the last partial batch kept), and the same
random numbers: jaxuq draws them and TU is fed them — the augmentation (TU gets jaxuq's augmented,
normalised batch), the dropout masks (``experiments._inject.dropout_masks``) and the Bayesian weight
noise (``experiments._inject.bayes_noise``). The loss of every step is recorded on both sides; a bug
shows as drift at step 1, fp32 chaos as growth after a stretch of agreement. TU-vs-TU profiles put the
drift in scale: TU with 1 thread against TU with the default threads, and TU from an init perturbed by
``perturbation`` (absolute, N(0, 1) per weight). The final test accuracy of every run is reported.

Methods (the DE->PE tutorial recipe: MNIST, batch 512, plain SGD 0.05, RandomCrop(28, 4)):

- ``single``: TU ``lenet(1, 10)``; jaxuq ``lenet`` through ``fit``.
- ``de``: TU ``deep_ensembles(lenet, 2)`` + ``RepeatTarget(2)`` at LR x 2; jaxuq: the stacked ensemble with
  TU's gradient scaling (``grad_scale = 1/M``) and one shared data order. Every member gets the same
  augmented batch, as in TU, which shares the batch across its members: the members' state keys are
  made equal here (``fit`` reproduces it with ``EnsembleConfig.shared_augmentation``, which
  ``tu_deep_ensembles`` sets, keeping per-member dropout keys).
- ``packed``: TU ``packed_lenet(alpha=2, gamma=1, M=4)`` + ``RepeatTarget(4)`` at LR x 4; jaxuq the same
  through the engine.
- ``mc_dropout``: TU ``lenet(dropout_rate)`` trained with dropout; jaxuq's engine draws the masks (its
  ``'dropout'`` keys) and TU's ``F.dropout``/``F.dropout2d`` use them.
- ``bayes``: TU ``bayesian_lenet`` + ``ELBOLoss(CE, kl_weight, bayes_samples)`` with SGD (or Adam); jaxuq
  ``bayesian_lenet`` + ``ELBOLoss`` over the injected noise (vmapped) in a jitted step written here (a test
  instrument; ``fit`` trains it with ``jaxuq.train.ELBOObjective``, whose noise comes from its keys).
  The noise is drawn here (numpy) and fed to both sides.
  TU's ELBO is lower by ``kl_weight * offset`` (TU's log-posterior constant, README deviations); the
  drift is measured after adding it back.

The jaxuq side of ``single``/``de``/``packed``/``mc_dropout`` is ``jaxuq.train.fit`` itself (one epoch,
``TrainConfig.record_steps``: every step's loss; ``steps`` shortens the training set to that many
batches, since fit runs whole epochs); the TU side is ``ClassificationRoutine.training_step`` with its
optimiser, stepped as Lightning's automatic optimisation does (zero_grad, training_step, backward, step).

Config keys:
  methods        ["single", "de", "packed", "mc_dropout", "bayes"]
  train_images   60000   first k MNIST training images: one epoch over them
  test_images    10000   first k MNIST test images for the final accuracies (0: none)
  batch_size     512
  steps          null    train on the first steps * batch_size images only (null: all train_images)
  lr             0.05    SGD learning rate (x de_members for de, x packed_members for packed)
  crop           true    RandomCrop(28, padding=4) as the tutorial (drawn by jaxuq, fed to TU)
  de_members     2
  packed_members 4
  alpha          2
  gamma          1
  dropout_rate   0.5     mc_dropout
  bayes_samples  3       ELBO samples per step (bayes)
  kl_weight      0.0001  bayes
  bayes_optimizer "sgd"  "sgd" (torch SGD / torch_sgd) or "adam" (torch Adam / torch_adam), bayes
  bayes_lr       0.05    its learning rate
  tu_threads     null    torch threads of the reference TU run (null: torch's default)
  tu_vs_tu       true    also TU with 1 thread and TU from a perturbed init
  perturbation   1e-07
  report_steps   [1, 10, 30, 50, 70, 90, 110]
  seed           0
  compare_tu     true    (always true: the experiment is the comparison)
  data_dir       null    data folder (null: $JAXUQ_DATA_DIR)
"""

from __future__ import annotations

import contextlib
import time
import warnings
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments._compare import drift, render_text
from experiments._inject import bayes_noise, dropout_masks, masks_nhwc_to_torch
from jaxuq.data import MNIST_NORM, Preprocess
from jaxuq.data.formats import RepeatTarget
from jaxuq.data.pipeline import epoch_permutation
from jaxuq.ensembles import default_lowering
from jaxuq.evaluation import predict
from jaxuq.losses import ELBOLoss, kl_divergence
from jaxuq.nn.bayesian import EPS, KL
from jaxuq.nn.dropout import MASKS
from jaxuq.train import TrainConfig, TrainState, fit, torch_adam, torch_sgd, tu_deep_ensembles

METHODS = ("single", "de", "packed", "mc_dropout", "bayes")
NOTES = [
    "drift = |loss_a - loss_TU| / |loss_TU| per step; TU = ClassificationRoutine.training_step + its "
    "optimiser with torch's default threads; 'TU 1 thread' and 'TU perturbed' (init + perturbation * "
    "N(0, 1)) are TU again",
    "jaxuq draws the augmentation (RandomCrop), the dropout masks and the Bayesian noise; TU is fed them",
    "bayes: TU's losses are lower by tu_elbo_offset (TU's log-posterior constant); the drift adds it back",
    "accuracy: first test_images MNIST test images; ensembles average the softmax; bayes: posterior means",
]
DROPOUT_CALLS = (("conv_dropout", 0), ("conv_dropout", 1), ("fc_dropout", 0), ("last_fc_dropout", 0))


def get_config() -> dict:
    return {
        "methods": list(METHODS), "train_images": 60000, "test_images": 10000, "batch_size": 512,
        "steps": None, "lr": 0.05, "crop": True, "de_members": 2, "packed_members": 4, "alpha": 2, "gamma": 1,
        "dropout_rate": 0.5, "bayes_samples": 3, "kl_weight": 1e-4, "bayes_optimizer": "sgd",
        "bayes_lr": 0.05, "tu_threads": None, "tu_vs_tu": True,
        "perturbation": 1e-7, "report_steps": [1, 10, 30, 50, 70, 90, 110], "seed": 0, "compare_tu": True,
        "data_dir": None,
    }  # fmt: skip


SMALL = {"train_images": 1024, "test_images": 256, "batch_size": 64, "steps": 12, "tu_vs_tu": False,
         "report_steps": [1, 5, 10]}  # fmt: skip


def _members(name: str, cfg: dict) -> int | None:
    return {"de": cfg["de_members"], "packed": cfg["packed_members"]}.get(name)


# ------------------------------------------------------------------------------- the two models
def tu_model(name: str, cfg: dict, perturbation: float = 0.0):
    """TU's model for ``name`` under ``torch.manual_seed(seed)``; ``perturbation`` p: w + p * N(0, 1)."""
    import torch
    from torch_uncertainty.methods import deep_ensembles
    from torch_uncertainty.models.classification import bayesian_lenet, lenet, packed_lenet

    torch.manual_seed(cfg["seed"])
    model = {
        "single": lambda: lenet(1, 10),
        "mc_dropout": lambda: lenet(1, 10, dropout_rate=cfg["dropout_rate"]),
        "de": lambda: deep_ensembles(lenet(1, 10), num_estimators=cfg["de_members"], task="classification",
                                     reset_model_parameters=True),
        "packed": lambda: packed_lenet(1, 10, num_estimators=cfg["packed_members"], alpha=cfg["alpha"],
                                       gamma=cfg["gamma"]),
        "bayes": lambda: bayesian_lenet(1, 10, num_samples=cfg["bayes_samples"]),
    }[name]()
    if perturbation:
        g = torch.Generator().manual_seed(cfg["seed"] + 1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(perturbation * torch.randn(p.shape, generator=g))
    return model


def tu_routine(name: str, model, cfg: dict):
    """``(ClassificationRoutine, optimizer)``: TU's loss, batch format and optimiser for ``name``."""
    import torch
    from torch import nn
    from torch_uncertainty.losses import ELBOLoss as TUELBOLoss
    from torch_uncertainty.routines import ClassificationRoutine
    from torch_uncertainty.transforms import RepeatTarget as TURepeatTarget

    m = _members(name, cfg)
    kw = {"is_ensemble": True, "format_batch_fn": TURepeatTarget(m)} if m else {}
    if name == "bayes":
        loss = TUELBOLoss(None, nn.CrossEntropyLoss(), cfg["kl_weight"], num_samples=cfg["bayes_samples"])
        opt = (torch.optim.Adam if cfg["bayes_optimizer"] == "adam" else torch.optim.SGD)(
            model.parameters(), lr=cfg["bayes_lr"])
    else:
        loss, opt = nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=cfg["lr"] * (m or 1))
    return ClassificationRoutine(model=model, num_classes=10, loss=loss, **kw), opt


def jaxuq_twin(name: str, model, cfg: dict):
    """``(module, variables)``: TU's ``model`` converted (stacked ``[M, ...]`` for ``de``)."""
    from converters.ensemble import split_deep_ensembles, stack_members
    from converters.mappings import convert_state_dict, infer

    sd = {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
    if name == "de":
        parts = [convert_state_dict("lenet", p, in_channels=1, num_classes=10)
                 for p in split_deep_ensembles(sd)]
        return parts[0][0], stack_members([v for _, v in parts])
    if name == "packed":
        return convert_state_dict("packed_lenet", sd, in_channels=1, num_classes=10, alpha=cfg["alpha"],
                                  num_estimators=cfg["packed_members"], gamma=cfg["gamma"])
    if name == "mc_dropout":
        return convert_state_dict("lenet", sd, in_channels=1, num_classes=10,
                                  dropout_rate=cfg["dropout_rate"])
    arch, kw = infer(sd)
    return convert_state_dict(arch, sd, **kw)


# ------------------------------------------------------------------------------- jaxuq's side
def keys(cfg: dict, name: str):
    """``(run_key, data_key)`` as ``fit`` derives them (the run key of member 0 for ``de``)."""
    k_model, k_data = jax.random.split(jax.random.key(cfg["seed"]))
    m = _members(name, cfg) if name == "de" else None
    k_member = k_model if m is None else jax.random.split(k_model, m)[0]
    return jax.random.split(k_member, 3)[2], k_data


def train_state(name: str, module, variables, cfg: dict) -> TrainState:
    """The engine's TrainState from the converted variables; ``de``: M members with one shared key."""
    m = _members(name, cfg)
    if name == "bayes":
        tx = (torch_adam if cfg["bayes_optimizer"] == "adam" else torch_sgd)(cfg["bayes_lr"])
    else:
        tx = torch_sgd(cfg["lr"] * (m or 1))
    params = jax.tree.map(jnp.asarray, variables["params"])
    key = keys(cfg, name)[0]
    if name == "de":
        return TrainState(step=jnp.zeros((m,), jnp.int32), apply_fn=module.apply, params=params, tx=tx,
                          opt_state=jax.vmap(tx.init)(params), batch_stats={}, key=jnp.stack([key] * m))
    return TrainState(step=jnp.zeros((), jnp.int32), apply_fn=module.apply, params=params, tx=tx,
                      opt_state=tx.init(params), batch_stats={}, key=key)


def batches(n: int, cfg: dict, k_data) -> list[np.ndarray]:
    """fit's batches of epoch 0: ``epoch_permutation`` split into ``batch_size`` rows, the last partial
    batch kept; the first ``steps`` of them."""
    perm = np.asarray(epoch_permutation(k_data, 0, n))
    bs = cfg["batch_size"]
    out = [perm[i : i + bs] for i in range(0, n, bs)]
    return out[: cfg["steps"]] if cfg["steps"] else out


def preprocess(cfg: dict) -> Preprocess:
    return Preprocess(*MNIST_NORM, crop=28, padding=4) if cfg["crop"] else Preprocess(*MNIST_NORM)


def fit_config(name: str, cfg: dict) -> TrainConfig:
    """``fit``'s settings for ``name``: one epoch, every step's loss recorded (``record_steps``); ``de``:
    :func:`jaxuq.train.tu_deep_ensembles` (shared order and augmented batch, grads / M); ``packed``:
    ``RepeatTarget(M)``. The optimiser is the initial state's."""
    m = _members(name, cfg)
    base = TrainConfig(epochs=1, batch_size=cfg["batch_size"], preprocess=preprocess(cfg), seed=cfg["seed"],
                       format_batch=RepeatTarget(m) if name == "packed" else None, quiet=True,
                       record_steps=True)
    return tu_deep_ensembles(m, cfg["lr"], base, optimizer=torch_sgd) if name == "de" else base


def run_engine(name: str, module, state, images, labels, idx: list[np.ndarray], cfg: dict):
    """jaxuq's ``fit`` from ``state`` over one epoch of ``images`` (its steps are ``idx``):
    ``(state, losses [S])``; an ensemble's step loss is the members' mean (TU's CE over (m b) rows)."""
    r = fit(module, (images, labels), fit_config(name, cfg), init_state=state)
    losses = np.asarray(r.history[0]["train_loss_steps"], np.float64)
    losses = losses.mean(axis=1) if losses.ndim == 2 else losses
    if len(losses) != len(idx):
        raise ValueError(f"fit ran {len(losses)} steps, the TU side {len(idx)}: give steps = the epoch's")
    return r.state, losses


@partial(jax.jit, static_argnames=("module", "loss", "tx"))
def _bayes_step(module, loss, tx, params, opt_state, x, y, noise):
    def value(p):  # the samples' injected noise, vmapped (bayesian_lenet has no BatchNorm)
        def one(eps):
            out, cols = module.apply({"params": p, EPS: eps}, x, train=True, mutable=[KL])
            return out, kl_divergence(cols[KL])

        outs, kls = jax.vmap(one)(noise)
        return loss(outs, y, kls)

    val, grads = jax.value_and_grad(value)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, val


def run_bayes(module, state, steps: list, cfg: dict):
    """The lockstep tool's own jitted ELBO step over ``steps`` (x, y, noise): ``(state, losses [S])``."""
    loss = ELBOLoss(kl_weight=cfg["kl_weight"], num_samples=cfg["bayes_samples"])
    params, opt_state, losses = state.params, state.opt_state, []
    for x, y, noise in steps:
        params, opt_state, val = _bayes_step(module, loss, state.tx, params, opt_state, x, y, noise)
        losses.append(float(val))
    return state.replace(params=params, opt_state=opt_state), np.asarray(losses)


# ------------------------------------------------------------------------------- the shared random numbers
@partial(jax.jit, static_argnames=("pre",))
def _augment(pre, key, step, images):
    """The engine's augmentation of step ``step``: ``pre.train(split(fold_in(key, step))[0], images)``."""
    return pre.train(jax.random.split(jax.random.fold_in(key, step))[0], images)


@partial(jax.jit, static_argnames=("module",))
def _train_masks(module, variables, x, key, step):
    """The dropout masks the engine's step ``step`` draws (its ``'dropout'`` key; masks do not depend on
    the parameters or the input values, only on the keys and shapes)."""
    k_drop = jax.random.split(jax.random.fold_in(key, step))[1]
    _, state = module.apply(variables, x, train=True, rngs={"dropout": k_drop}, mutable=[MASKS])
    return state[MASKS]


def _flax_layout(a: np.ndarray) -> np.ndarray:
    return np.transpose(a, (2, 3, 1, 0)) if a.ndim == 4 else (a.T if a.ndim == 2 else a)


def bayes_layers(model) -> dict:
    """``{layer name: module}`` of TU's Bayesian layers (``core_model.`` stripped)."""
    from torch_uncertainty.layers.bayesian import bayesian_modules

    return {n.removeprefix("core_model."): m for n, m in model.named_modules()
            if isinstance(m, bayesian_modules)}


def bayes_draws(layers: dict, num: int, seed: int, step: int) -> list[dict]:
    """``num`` noise draws ``{layer: {"weight", "bias"}}`` (torch layout) for step ``step``."""
    rng = np.random.default_rng([seed, step])
    def normal(t):
        return rng.standard_normal(tuple(t.shape)).astype(np.float32)

    return [{n: {"weight": normal(m.weight_mu), "bias": normal(m.bias_mu)} for n, m in layers.items()}
            for _ in range(num)]


def step_inputs(name: str, cfg: dict, module, variables, data: dict, idx: list, layers: dict) -> list[dict]:
    """Per step: the augmented batch ``x`` (NHWC float32), ``y``, and the injected randomness (``masks`` in
    torch's call order, or Bayesian ``draws``)."""
    key, pre, out = keys(cfg, name)[0], preprocess(cfg), []
    for s, i in enumerate(idx):
        st = {"x": np.asarray(_augment(pre, key, s, jnp.asarray(data["train"][0][i]))),
              "y": data["train"][1][i].astype(np.int64)}
        if name == "mc_dropout":
            masks = jax.tree.map(np.asarray, _train_masks(module, variables, st["x"], key, s))
            st["masks"] = [masks_nhwc_to_torch(masks[n]["mask"][c]) for n, c in DROPOUT_CALLS]
        if name == "bayes":
            st["draws"] = bayes_draws(layers, cfg["bayes_samples"], cfg["seed"], s)
        out.append(st)
    return out


def _noise_tree(draws: list[dict]):
    trees = [{n: {k: _flax_layout(v) for k, v in d.items()} for n, d in draw.items()} for draw in draws]
    return jax.tree.map(lambda *a: jnp.stack(a), *trees)


def _injection(name: str, st: dict, layers: dict):
    if name == "mc_dropout":
        return dropout_masks(st["masks"])
    if name == "bayes":
        queues = {}
        for n, m in layers.items():
            queues[id(m.weight_sampler)] = [d[n]["weight"] for d in st["draws"]]
            queues[id(m.bias_sampler)] = [d[n]["bias"] for d in st["draws"]]
        return bayes_noise(lambda sampler: queues[id(sampler)].pop(0))
    return contextlib.nullcontext()


# ------------------------------------------------------------------------------- TU's side
def run_tu(name: str, cfg: dict, steps: list[dict], threads: int | None = None, perturbation: float = 0.0):
    """TU's routine over the same steps: ``(model, losses [S])``."""
    import torch

    model = tu_model(name, cfg, perturbation)
    routine, opt = tu_routine(name, model, cfg)
    routine.train()
    layers = bayes_layers(model) if name == "bayes" else {}
    old, losses = torch.get_num_threads(), []
    torch.set_num_threads(threads or old)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*self.log.*")
            for st in steps:
                x, y = torch.from_numpy(st["x"].transpose(0, 3, 1, 2).copy()), torch.from_numpy(st["y"])
                with _injection(name, st, layers):
                    opt.zero_grad()
                    loss = routine.training_step((x, y))
                    loss.backward()
                    opt.step()
                losses.append(float(loss.detach().reshape(())))
    finally:
        torch.set_num_threads(old)
    return model, np.asarray(losses)


def tu_accuracy(name: str, model, images: np.ndarray, labels: np.ndarray, cfg: dict) -> float:
    """Test accuracy of TU's trained ``model`` (ensembles: mean softmax; bayes: the posterior means)."""
    import torch

    model.eval()
    if name == "bayes":
        model.freeze()
    x = np.asarray(preprocess(cfg).eval(jnp.asarray(images))).transpose(0, 3, 1, 2)
    probs = []
    with torch.no_grad():
        for i in range(0, len(x), 2000):
            out = model(torch.from_numpy(x[i : i + 2000].copy()))
            out = torch.softmax(out.reshape(-1, len(x[i : i + 2000]), out.shape[-1]), -1).mean(0)
            probs.append(out.numpy())
    if name == "bayes":
        model.unfreeze()
    return float(np.mean(np.concatenate(probs).argmax(-1) == labels))


def jaxuq_accuracy(name: str, module, params, images: np.ndarray, labels: np.ndarray, cfg: dict) -> float:
    """Test accuracy of jaxuq's trained model (ensembles: mean softmax; bayes: the posterior means)."""
    if name == "bayes":
        module = module.clone(frozen=True)
    logits = predict(module, {"params": params}, images, preprocess=preprocess(cfg), batch_size=2000,
                     lowering=default_lowering() if name == "de" else None)
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), -1))
    probs = probs.mean(0) if probs.ndim == 3 else probs
    return float(np.mean(probs.argmax(-1) == labels))


# ------------------------------------------------------------------------------- profiles
def _at(profile: np.ndarray, steps: list[int]) -> dict:
    out = {str(s): float(profile[s - 1]) for s in steps if s <= len(profile)}
    out["end"] = float(profile[-1])
    out["max_first_30"] = float(np.max(profile[:30]))
    return out


def _tu_offset(name: str, model, cfg: dict) -> float:
    """TU's ELBO minus jaxuq's: ``-kl_weight * mean_l(0.5 n_l)`` (TU's log-posterior constant), else 0."""
    if name != "bayes":
        return 0.0
    n = [m.weight_mu.numel() + m.bias_mu.numel() for m in bayes_layers(model).values()]
    return -cfg["kl_weight"] * float(np.mean([0.5 * k for k in n]))


def profile(name: str, cfg: dict, data: dict) -> dict:
    """One method in lockstep: per-step losses of jaxuq and TU (and the TU-vs-TU runs), drift
    profiles and final test accuracies."""
    tu0 = tu_model(name, cfg)
    module, variables = jaxuq_twin(name, tu0, cfg)
    layers = bayes_layers(tu0) if name == "bayes" else {}
    idx = batches(len(data["train"][0]), cfg, keys(cfg, name)[1])
    steps = step_inputs(name, cfg, module, variables, data, idx, layers)
    state = train_state(name, module, variables, cfg)
    if name == "bayes":
        triples = [(s["x"], s["y"], _noise_tree(s["draws"])) for s in steps]
        state, losses = run_bayes(module, state, triples, cfg)
    else:
        state, losses = run_engine(name, module, state, *data["train"], idx, cfg)
    offset = _tu_offset(name, tu0, cfg)
    runs = {"tu": run_tu(name, cfg, steps, threads=cfg["tu_threads"])}
    if cfg["tu_vs_tu"]:
        runs["tu_1_thread"] = run_tu(name, cfg, steps, threads=1)
        runs["tu_perturbed"] = run_tu(name, cfg, steps, perturbation=cfg["perturbation"])
    ref = runs["tu"][1] - offset
    res = {"steps": len(idx), "tu_elbo_offset": offset, "losses": {"jaxuq": losses.tolist()},
           "drift": {"jaxuq_vs_tu": _at(drift(losses, ref), cfg["report_steps"])}, "accuracy": {}}
    for k, (_, loss) in runs.items():
        res["losses"][k] = loss.tolist()
        if k != "tu":
            res["drift"][f"{k}_vs_tu"] = _at(drift(loss, runs["tu"][1]), cfg["report_steps"])
    if cfg["test_images"]:
        test = data["test"]
        res["accuracy"]["jaxuq"] = jaxuq_accuracy(name, module, state.params, *test, cfg)
        for k, (model, _) in runs.items():
            res["accuracy"][k] = tu_accuracy(name, model, *test, cfg)
    return res


def load_data(cfg: dict) -> dict:
    from jaxuq.data import load_mnist

    x, y = load_mnist("train", cfg["data_dir"])
    n = cfg["train_images"]
    n = min(n, cfg["steps"] * cfg["batch_size"]) if cfg["steps"] else n
    data = {"train": (x[:n], y[:n])}  # fit runs whole epochs: `steps` is the epoch's length
    if cfg["test_images"]:
        xt, yt = load_mnist("test", cfg["data_dir"])
        data["test"] = (xt[: cfg["test_images"]], yt[: cfg["test_images"]])
    return data


def render(results: dict, cfg: dict) -> str:
    """One row per method and profile: the relative drift at the report steps, the end, the maximum
    over the first 30 steps, and the test accuracy of run a (and of TU)."""
    from rich.table import Table

    steps = [str(s) for s in cfg["report_steps"]] + ["end", "max_first_30"]
    names = {"jaxuq_vs_tu": "jaxuq", "tu_1_thread_vs_tu": "TU 1 thr", "tu_perturbed_vs_tu": "TU pert"}
    t = Table(title="lockstep: relative loss drift |a - TU| / |TU| at step k (TU: default threads)")
    for c in ["method", "a", *(c.replace("max_first_30", "max<=30") for c in steps), "acc a", "acc TU"]:
        t.add_column(c, justify="left" if c in ("method", "a") else "right")
    for name, r in results.items():
        for prof, d in r["drift"].items():
            acc = r["accuracy"]
            a = prof.removesuffix("_vs_tu")
            pct = [f"{100 * acc[k]:.2f}" if k in acc else "-" for k in (a, "tu")]
            t.add_row(name, names.get(prof, prof), *[f"{d[c]:.0e}" if c in d else "-" for c in steps], *pct)
    return render_text(t)


def run(config: dict, out_dir) -> tuple[dict, str]:
    if not config["compare_tu"]:
        raise ValueError("lockstep compares with TU by definition: compare_tu must be true")
    unknown = sorted(set(config["methods"]) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; known: {list(METHODS)}")
    if config["bayes_optimizer"] not in ("sgd", "adam"):
        raise ValueError(f"bayes_optimizer must be 'sgd' or 'adam', got {config['bayes_optimizer']!r}")
    data = load_data(config)
    results = {}
    for name in config["methods"]:
        t0 = time.perf_counter()
        results[name] = profile(name, config, data)
        results[name]["seconds"] = time.perf_counter() - t0
        d = results[name]["drift"]["jaxuq_vs_tu"]
        print(f"lockstep {name}: {results[name]['steps']} steps, jaxuq vs TU max over the first 30 "
              f"{d['max_first_30']:.1e}, end {d['end']:.1e} ({results[name]['seconds']:.0f} s)", flush=True)
    recipe = {k: v for k, v in config.items() if k != "data_dir"}
    return {"recipe": recipe, "notes": NOTES, "methods": results}, render(results, config)


if __name__ == "__main__":
    import sys

    from experiments._launch import launch_module

    sys.exit(launch_module(__name__))
