"""A tiny CNN (conv-BN-ReLU-pool, dropout, dense) for tests of the training engine (tests only, not in the wheel).

It follows the jaxuq model convention (``__call__(x, train)``, ``'dropout'`` rng, mutable
``batch_stats``) so that the loop is exercised with BatchNorm and dropout, independent of
``jaxuq.models``.
"""

from __future__ import annotations

import flax.linen as nn

from jaxuq.nn import Conv


class TinyCNN(nn.Module):
    num_classes: int = 10
    features: int = 8
    dropout_rate: float = 0.1

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), name="conv1")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name="bn1")(x)
        x = nn.relu(x)
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = Conv(2 * self.features, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(x)
        x = nn.max_pool(nn.relu(x), (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes, name="linear")(x)
