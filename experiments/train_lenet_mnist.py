"""TU's LeNet/MNIST training recipe (batch 128, the tutorial's SGD 0.05): jaxuq vs TU 0.13.0, 3 seeds each.

The single-model part of ``de_to_pe`` (same code, same keys, see ``python -m experiments de_to_pe
--help``) with the recipe that the LeNet parity check uses: 60,000 MNIST training images, 3 epochs,
batch 128 (de_to_pe's tutorial uses 512), plain SGD at 0.05 held constant, ``RandomCrop(28, 4)`` +
``Normalize(0.1307, 0.3081)``, torch-default initialisation; test on the 10,000 MNIST test images
(plus de_to_pe's FashionMNIST OOD rows). TU side: ``lenet`` + ``ClassificationRoutine`` +
``TUTrainer`` (CPU) + ``MNISTDataModule``.

Config keys: those of ``de_to_pe``; here ``batch_size`` = 128, ``models`` = ["single"], ``hub`` = false.
"""

from __future__ import annotations

from experiments import de_to_pe

SMALL = de_to_pe.SMALL


def get_config() -> dict:
    """de_to_pe's config with this recipe's batch size and the single LeNet only."""
    return de_to_pe.get_config() | {"batch_size": 128, "models": ["single"], "hub": False}


def run(config: dict, out_dir):
    """``de_to_pe.run`` with this config."""
    return de_to_pe.run(config, out_dir)


if __name__ == "__main__":
    from experiments._launch import launch_module

    raise SystemExit(launch_module(__name__))
