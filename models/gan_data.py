"""Day profiles of ``elecdemand`` for the GAN: 365 days x 48 half-hours, split by day.

A day is its 48 demand values (GW), its 48 temperatures (degC) and its workday flag (the
flag is constant within each day of the data). Days are split at random (seeded), not
chronologically: a chronological cut would hold out one season whose temperatures the
generator never saw. Held-out days are never shown to either network.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from statecast.models.gan import DAY

SPLIT_SEED = 17
HELD_OUT_FRACTION = 0.2

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Days:
    demand: Floats  # [D, 48] GW
    temperature: Floats  # [D, 48] degC
    workday: Floats  # [D] 0/1
    index: npt.NDArray[np.int64]  # day number in 2014 (0 = 1 January)

    def __len__(self) -> int:
        return len(self.index)

    def conditions(self) -> Floats:
        """``[D, 49]``: the generator's raw condition input."""
        return np.concatenate([self.temperature, self.workday[:, None]], axis=1)

    def subset(self, idx: npt.NDArray[np.int64]) -> Days:
        return Days(self.demand[idx], self.temperature[idx], self.workday[idx], self.index[idx])


def load_days() -> Days:
    from statecast.models.datasets import load_elecdemand

    frame = load_elecdemand()
    n = len(frame) // DAY
    demand = frame["demand"].to_numpy(np.float64)[: n * DAY].reshape(n, DAY)
    temp = frame["temperature"].to_numpy(np.float64)[: n * DAY].reshape(n, DAY)
    workday = frame["workday"].to_numpy(np.float64)[: n * DAY].reshape(n, DAY)[:, 0]
    return Days(demand, temp, workday, np.arange(n, dtype=np.int64))


def split_days(days: Days, seed: int = SPLIT_SEED) -> tuple[Days, Days]:
    """``(train, held_out)``, each in calendar order."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(days))
    n_held = round(len(days) * HELD_OUT_FRACTION)
    return days.subset(np.sort(order[n_held:])), days.subset(np.sort(order[:n_held]))
