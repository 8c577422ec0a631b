"""TU's ensemble-in-one-network families (ResNet-18 forms on CIFAR-10, LeNet forms on MNIST): TU beside jaxuq.

    python -m experiments methods_cifar [--small] [--set key=value ...] [--out DIR]

For every model of ``models`` and every seed: TU 0.13.0 builds the model (``torch.manual_seed(seed)``;
its init law, and for Masksembles its masks), and that very initial state dict, converted by
``converters.mappings.convert_state_dict``, is jaxuq's starting point. Both sides then train with the same
recipe on the same batches in the same order: TU's ``ClassificationRoutine`` + ``TUTrainer.fit`` (plain
``SGD(lr)``, cross-entropy, the family's batch format) beside ``jaxuq.train.fit`` (``optax.sgd(lr)``,
the same format); TU's loader serves the engine's epoch orders (``epoch_permutation(split(key(seed))[1],
e, N)``). Both preprocess ``x / 255``; no augmentation. MIMO's ``MIMOBatchFormat`` draws permutations at
every step (``torch.randperm`` / a JAX key): here one fixed set, given to jaxuq's ``MIMOBatchFormat
(permutations=...)`` and injected into TU's ``torch.randperm``, so the two runs see the same batches.

Every training step's loss is recorded on both sides (``record_steps``; a Lightning callback on TU's
``training_step`` value): ``loss_drift`` is the worst relative gap at step 1, over the first 10 steps and
over all, so a port error (a gap at step 1) shows apart from float32 chaos (growth after agreement).
With ``tu_vs_tu``, TU trains again from the same state dict on one torch thread (the same arithmetic in
another summation order): ``loss_drift_tu_1thread`` is how far TU drifts from itself in the same recipe.
Then (1) each side's test table (TU's ``TUTrainer.test`` vs ``jaxuq.evaluate``) on the test images, |Δ|
per key; (2) the TU-trained model converted to jaxuq: its eval logits (``[(M B), C]``, TU's eval-time
input repetition included) against TU's on the same test images. Any gap in (1) beyond (2)'s is training
drift (float32 rounding amplified over the steps), not a port error.

Models (``models``): ``resnet18``, ``batched_resnet18``, ``masked_resnet18``, ``mimo_resnet18``,
``packed_resnet18`` (TU's ``cifar`` style at ``width`` x TU's width, on the CIFAR-10 subset
``$JAXUQ_DATA_DIR/cifar10_heads``: 5000 training, 1000 test images) and ``lenet``, ``packed_lenet``,
``batchensemble_lenet`` (MNIST; TU has no masked or MIMO LeNet). Reductions against TU's CIFAR recipes
(200 epochs, SGD momentum 0.9, weight decay, crops/flips, full width): ``epochs``, ``width``, plain SGD, no
augmentation, the subset; LeNet: ``epochs`` of plain SGD at ``lr`` on ``mnist_train`` images.

Config keys:
  models: the model names above (a list).
  seeds: seeds per model (TU's init and masks, the engine's data order); the LeNet forms use all of
    them, the ResNet-18 forms the first ``resnet_seeds``.
  resnet_seeds: how many of ``seeds`` the ResNet-18 forms use.
  num_estimators: M of every ensemble form.
  width: ResNet width multiplier (TU's ``width_multiplier``; ``masked_resnet18`` needs >= 0.25: TU refuses
    Masksembles layers of fewer than 10 channels).
  epochs: training epochs (both sides).
  batch_size: training batch (even, a multiple of num_estimators, dividing the training sets: the batched /
    masked layers split it into M members, MIMO's fixed permutations need full batches).
  lr: SGD learning rate.
  cifar_train: CIFAR-10 training images used (<= 5000, the subset in the data folder).
  cifar_test: CIFAR-10 test images used (<= 1000).
  mnist_train: MNIST training images used (<= 60000).
  mnist_test: MNIST test images used (<= 10000).
  tu_vs_tu: also train TU a second time from the same initial state dict on one torch thread, and report
    that run's loss drift from TU's (how fast float32 rounding alone grows in this recipe).
  data_dir: the data folder (None: $JAXUQ_DATA_DIR).
"""

from __future__ import annotations

import contextlib
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from converters import mappings
from experiments._compare import compare_tables, drift, render_text
from experiments._launch import launch_module
from jaxuq.data import MIMOBatchFormat, RepeatTarget, epoch_permutation, load_mnist
from jaxuq.evaluation import evaluate
from jaxuq.train import TrainConfig, fit
from jaxuq.train.state import TrainState

# name -> (TU factory, data set, family)
MODELS = {
    "resnet18": ("resnet", "cifar", "std"),
    "batched_resnet18": ("batched_resnet", "cifar", "batched"),
    "masked_resnet18": ("masked_resnet", "cifar", "masked"),
    "mimo_resnet18": ("mimo_resnet", "cifar", "mimo"),
    "packed_resnet18": ("packed_resnet", "cifar", "packed"),
    "lenet": ("lenet", "mnist", "std"),
    "packed_lenet": ("packed_lenet", "mnist", "packed"),
    "batchensemble_lenet": ("batchensemble_lenet", "mnist", "batched"),
}
MIMO_RHO = 0.5


def get_config() -> dict:
    return {
        "models": list(MODELS),
        "seeds": [0, 1, 2],
        "resnet_seeds": 1,
        "num_estimators": 4,
        "width": 0.25,
        "epochs": 1,
        "batch_size": 100,
        "lr": 0.05,
        "cifar_train": 5000,
        "cifar_test": 1000,
        "mnist_train": 60000,
        "mnist_test": 10000,
        "tu_vs_tu": True,
        "data_dir": None,
    }


SMALL = {"models": ["batched_resnet18", "mimo_resnet18", "packed_lenet"], "seeds": [0], "num_estimators": 2,
         "width": 0.125, "batch_size": 16, "cifar_train": 32, "cifar_test": 32, "mnist_train": 32,
         "mnist_test": 32}


def _check(config: dict) -> None:
    bad = [m for m in config["models"] if m not in MODELS]
    if bad or not config["models"]:
        raise ValueError(f"models must be a non-empty list of {list(MODELS)}; got {config['models']!r}")
    limits = {"cifar_train": 5000, "cifar_test": 1000, "mnist_train": 60000, "mnist_test": 10000}
    for key, hi in limits.items():
        if not isinstance(config[key], int) or not 1 <= config[key] <= hi:
            raise ValueError(f"{key} must be an int in [1, {hi}]; got {config[key]!r}")
    for key in ("epochs", "batch_size", "num_estimators", "resnet_seeds"):
        if not isinstance(config[key], int) or config[key] < 1:
            raise ValueError(f"{key} must be a positive int; got {config[key]!r}")
    bs, m = config["batch_size"], config["num_estimators"]
    for key in ("cifar_train", "mnist_train"):  # full batches that split into M members and MIMO's halves
        if config[key] % bs or bs % 2 or bs % m:
            raise ValueError(f"batch_size must be even, a multiple of num_estimators ({m}) and divide {key}; "
                             f"got {bs}")


def load_data(config: dict) -> dict:
    """``{"cifar"|"mnist": {"train": (uint8 NHWC, int64), "test": (...)}}`` for the data sets needed."""
    from experiments import _inputs

    out, need = {}, {MODELS[m][1] for m in config["models"]}
    if "cifar" in need:
        tr, te = _inputs.load_cifar_heads(config["data_dir"])
        n, k = config["cifar_train"], config["cifar_test"]
        out["cifar"] = {"train": (tr["images"][:n], tr["labels"][:n].astype(np.int64)),
                        "test": (te["images"][:k], te["labels"][:k].astype(np.int64))}
    if "mnist" in need:
        (xtr, ytr), (xte, yte) = (load_mnist(split, config["data_dir"]) for split in ("train", "test"))
        n, k = config["mnist_train"], config["mnist_test"]
        out["mnist"] = {"train": (xtr[:n], ytr[:n].astype(np.int64)),
                        "test": (xte[:k], yte[:k].astype(np.int64))}
    return out


def model_kwargs(name: str, config: dict) -> dict:
    """TU's factory arguments of model ``name`` (jaxuq's factory takes the same)."""
    _, data, family = MODELS[name]
    m = config["num_estimators"]
    kw = ({"in_channels": 3, "num_classes": 10, "arch": 18, "style": "cifar",
           "width_multiplier": config["width"]} if data == "cifar" else {"in_channels": 1, "num_classes": 10})
    extra = {"std": {}, "batched": {"num_estimators": m}, "masked": {"num_estimators": m, "scale": 2.0},
             "mimo": {"num_estimators": m}, "packed": {"num_estimators": m, "alpha": 2, "gamma": 1}}[family]
    return kw | extra


def mimo_permutations(batch: int, m: int, seed: int) -> tuple:
    """One fixed set of MIMO draws (rho 0.5, batch_repeat 1): a permutation of the batch, then one of its
    first half per member (the order TU draws them in)."""
    rng = np.random.default_rng(seed)
    return tuple(tuple(int(i) for i in p) for p in [rng.permutation(batch)] +
                 [rng.permutation(batch // 2) for _ in range(m)])


@contextlib.contextmanager
def injected_randperm(perms):
    """TU's ``torch.randperm`` serving ``perms`` in turn, cyclically (every step draws the same set)."""
    import torch

    real, state = torch.randperm, {"i": 0}

    def randperm(n, *args, **kwargs):
        p = perms[state["i"] % len(perms)]
        state["i"] += 1
        if n != len(p):
            raise RuntimeError(f"randperm({n}) where the injected draw has {len(p)}")
        return torch.as_tensor(p, dtype=torch.int64)

    torch.randperm = randperm
    try:
        yield
    finally:
        torch.randperm = real


def formats(family: str, config: dict, seed: int):
    """``(TU format_batch_fn, jaxuq format_batch, MIMO draws or None)`` of a family (TU's routines)."""
    from torch_uncertainty import transforms as T

    m = config["num_estimators"]
    if family == "packed":
        return T.RepeatTarget(m), RepeatTarget(m), None
    if family == "mimo":
        perms = mimo_permutations(config["batch_size"], m, seed)
        return (T.MIMOBatchFormat(m, rho=MIMO_RHO, batch_repeat=1),
                MIMOBatchFormat(m, rho=MIMO_RHO, batch_repeat=1, permutations=perms), perms)
    return None, None, None  # std; batched / masked: TU's default "paper" strategy splits the batch


class _EpochOrders:
    """A torch sampler serving the engine's order of each epoch in turn."""

    def __init__(self, orders):
        self.orders, self.epoch = orders, 0

    def __iter__(self):
        order = self.orders[self.epoch % len(self.orders)]
        self.epoch += 1
        return iter(order.tolist())

    def __len__(self):
        return len(self.orders[0])


def _nchw(xu):
    return np.ascontiguousarray(xu.transpose(0, 3, 1, 2)).astype(np.float32) / 255.0


def _loss_recorder(losses: list):
    """A Lightning callback appending every training step's loss (the routine's ``training_step`` value)."""
    import lightning

    class _Record(lightning.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            losses.append(float(loss.detach().reshape(())))

    return _Record()


def train_tu(tm, family: str, config: dict, data: dict, seed: int):
    """TU's routine + ``TUTrainer.fit`` of torch model ``tm`` -> (routine, per-step losses, seconds)."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from torch_uncertainty.routines import ClassificationRoutine

    from experiments._tu import tu_trainer

    tu_fmt, _, perms = formats(family, config, seed)
    kw = {} if tu_fmt is None else {"format_batch_fn": tu_fmt}
    sgd = torch.optim.SGD(tm.parameters(), lr=config["lr"])
    routine = ClassificationRoutine(model=tm, num_classes=10, loss=torch.nn.CrossEntropyLoss(),
                                    is_ensemble=family != "std", optim_recipe={"optimizer": sgd}, **kw)
    xu, y = data["train"]
    k_data = jax.random.split(jax.random.key(seed))[1]  # fit's data key
    orders = [np.asarray(epoch_permutation(k_data, e, len(y))) for e in range(config["epochs"])]
    loader = DataLoader(TensorDataset(torch.tensor(_nchw(xu)), torch.tensor(y)),
                        batch_size=config["batch_size"], sampler=_EpochOrders(orders))
    losses: list[float] = []
    t0 = time.perf_counter()
    with injected_randperm(perms) if perms else contextlib.nullcontext():
        tu_trainer(max_epochs=config["epochs"], num_sanity_val_steps=0, limit_val_batches=0,
                   callbacks=[_loss_recorder(losses)]).fit(routine, train_dataloaders=loader)
    return routine, np.asarray(losses), time.perf_counter() - t0


def train_jaxuq(tu_name: str, kw: dict, sd0: dict, family: str, config: dict, data: dict, seed: int):
    """``jaxuq.train.fit`` from the converted initial state dict -> (module, variables, per-step losses,
    seconds)."""
    module, v = mappings.convert_state_dict(tu_name, sd0, "TU init", **kw)
    tx = optax.sgd(config["lr"])
    params = jax.tree.map(jnp.asarray, v["params"])
    as_jax = lambda c: jax.tree.map(jnp.asarray, v.get(c, {}))  # noqa: E731
    st = TrainState(step=jnp.zeros((), jnp.int32), apply_fn=module.apply, params=params, tx=tx,
                    opt_state=tx.init(params), batch_stats=as_jax("batch_stats"), key=jax.random.key(seed),
                    constants=as_jax("constants"))
    cfg = TrainConfig(optimizer=tx, epochs=config["epochs"], batch_size=config["batch_size"], seed=seed,
                      format_batch=formats(family, config, seed)[1], quiet=True, record_steps=True)
    t0 = time.perf_counter()
    r = fit(module, data["train"], cfg, init_state=st)
    jax.block_until_ready(r.state.params)
    seconds = time.perf_counter() - t0
    losses = np.concatenate([np.asarray(h["train_loss_steps"], np.float64).reshape(-1) for h in r.history])
    return module, r.state.variables(), losses, seconds


def drift_profile(tu_losses, jx_losses) -> dict:
    """The worst relative training-loss gap ``|jaxuq - TU| / |TU|`` over the first k steps (k = 1, 10,
    all): a port error shows at step 1, float32 chaos as growth after agreement."""
    if tu_losses.shape != jx_losses.shape:
        raise RuntimeError(f"TU ran {tu_losses.shape} steps, jaxuq {jx_losses.shape}")
    rel = drift(jx_losses, tu_losses)
    return {"1": float(rel[0]), "10": float(rel[:10].max()), "all": float(rel.max()), "steps": len(rel)}


def _tu_vs_tu(tu_name: str, kw: dict, sd0: dict, family: str, config: dict, data: dict, seed: int, tu_loss):
    """TU trained again from ``sd0`` on one torch thread: its drift profile from ``tu_loss``."""
    import torch
    from torch_uncertainty.models import classification as tu

    twin = getattr(tu, tu_name)(**kw)
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in sd0.items()})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, losses, _ = train_tu(twin, family, config, data, seed)
    finally:
        torch.set_num_threads(threads)
    return drift_profile(tu_loss, losses)


def _state_dict(tm) -> dict:
    return {k: v.detach().cpu().numpy().copy() for k, v in tm.state_dict().items()}


def run_one(name: str, config: dict, data: dict, seed: int) -> dict:
    """Both sides of model ``name`` at ``seed``: tables, |Δ| per key, the converted TU model's logits."""
    import torch
    from torch_uncertainty.models import classification as tu

    from experiments._tu import tu_test
    from jaxuq.data import Preprocess

    tu_name, _, family = MODELS[name]
    kw = model_kwargs(name, config)
    torch.manual_seed(seed)
    tm = getattr(tu, tu_name)(**kw)
    sd0 = _state_dict(tm)
    module, variables, jx_loss, jx_s = train_jaxuq(tu_name, kw, sd0, family, config, data, seed)
    routine, tu_loss, tu_s = train_tu(tm, family, config, data, seed)
    drift = drift_profile(tu_loss, jx_loss)
    ref = _tu_vs_tu(tu_name, kw, sd0, family, config, data, seed, tu_loss) if config["tu_vs_tu"] else None
    xt, yt = data["test"]
    tu_table = tu_test(routine.eval(), (_nchw(xt), yt), batch_size=256)
    jx_table = evaluate(module, variables, (xt, yt), preprocess=Preprocess(), batch_size=256, progress=False)
    _, conv = mappings.convert_state_dict(tu_name, _state_dict(tm), "TU trained", **kw)
    with torch.no_grad():
        z_tu = tm.eval()(torch.tensor(_nchw(xt))).numpy()
    z_jx = np.asarray(module.apply(conv, jnp.asarray(xt, jnp.float32) / 255.0, train=False))
    # the metrics are compared; the complexity keys are reported apart: TU counts a Masksembles mask as a
    # parameter (requires_grad=False), jaxuq keeps it in `constants`, and jaxuq's table counts no FLOPs here
    cplx = {k: {"tu": tu_table.get(k), "jaxuq": jx_table.get(k)}
            for k in ("test/cplx/params", "test/cplx/flops")}
    metrics = lambda t: {k: v for k, v in t.items() if not k.startswith("test/cplx/")}  # noqa: E731
    cmp = compare_tables(metrics(jx_table), metrics(tu_table))
    print(f"{name} seed {seed}: acc TU {100 * tu_table['test/cls/Acc']:.2f} % / jaxuq "
          f"{100 * jx_table['test/cls/Acc']:.2f} %; converted logits max|Δ| {np.abs(z_tu - z_jx).max():.1e}; "
          f"loss drift step 1 {drift['1']:.1e}, <= 10 {drift['10']:.1e}, all {drift['all']:.1e}", flush=True)
    return {"seed": seed, "tu": tu_table, "jaxuq": jx_table,
            "abs_diff": {k: d for k, (_, _, d) in cmp["diffs"].items()}, "max_abs_diff": cmp["max_abs_diff"],
            "keys_only_one_side": cmp["missing"] + cmp["extra"],
            "converted_logits_max_abs_diff": float(np.abs(z_tu - z_jx).max()), "loss_drift": drift,
            "loss_drift_tu_1thread": ref, "complexity": cplx,
            "seconds": {"tu_train": tu_s, "jaxuq_train": jx_s}}


def _seeds(name: str, config: dict) -> list:
    return config["seeds"] if MODELS[name][1] == "mnist" else config["seeds"][:config["resnet_seeds"]]


def _drift(runs: list, key: str) -> str:
    """``1/10/all``: the worst of ``runs``' drift profiles under ``key`` ("-" where not measured)."""
    if any(r.get(key) is None for r in runs):
        return "-"
    return "/".join(f"{max(r[key][k] for r in runs):.0e}" for k in ("1", "10", "all"))


def render(per_model: dict) -> str:
    """A plain-text table: per model, TU and jaxuq mean accuracy, max |Δ| over the table's keys, the
    converted logits' |Δ|, and the loss drift (step 1 / first 10 / all) of jaxuq and of TU on 1 thread
    from TU."""
    lines = [f"{'model':<20}{'seeds':>6}{'Acc TU':>9}{'Acc jaxuq':>11}{'max|Δ| tab':>11}{'logits|Δ|':>10}"
             f"{'jaxuq-TU 1/10/all':>19}{'TU1-TU 1/10/all':>19}"]
    for name, runs in per_model.items():
        mean = lambda side, k, runs=runs: float(np.mean([r[side][k] for r in runs]))  # noqa: E731
        worst = max(r["max_abs_diff"] for r in runs)
        logits = max(r["converted_logits_max_abs_diff"] for r in runs)
        lines.append(f"{name:<20}{len(runs):>6}{100 * mean('tu', 'test/cls/Acc'):>8.2f}%"
                     f"{100 * mean('jaxuq', 'test/cls/Acc'):>10.2f}%{worst:>11.1e}{logits:>10.1e}"
                     f"{_drift(runs, 'loss_drift'):>19}{_drift(runs, 'loss_drift_tu_1thread'):>19}")
    return "\n".join(lines)


def run(config: dict, out_dir) -> tuple[dict, str]:
    _check(config)
    data = load_data(config)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    per_model = {name: [run_one(name, config, data[MODELS[name][1]], s) for s in _seeds(name, config)]
                 for name in config["models"]}
    table = render(per_model)
    results = {
        "models": per_model,
        "max_abs_diff_tables": {n: max(r["max_abs_diff"] for r in runs) for n, runs in per_model.items()},
        "max_abs_diff_converted_logits": {n: max(r["converted_logits_max_abs_diff"] for r in runs)
                                          for n, runs in per_model.items()},
        "max_loss_drift": {n: {k: max(r["loss_drift"][k] for r in runs) for k in ("1", "10", "all")}
                           for n, runs in per_model.items()},
    }
    return results, render_text(table)


if __name__ == "__main__":
    raise SystemExit(launch_module(__name__))
