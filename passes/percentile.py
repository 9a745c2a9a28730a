"""Streaming percentile of positive activations in bounded memory.

:class:`StreamingPercentile` keeps, per population (or per channel), a
histogram of the positive values over log-spaced bins: bin ``j`` holds the
values ``v`` with ``floor(B * log2(v)) = j + B * min_exponent``, i.e. the
interval ``[2^(j/B), 2^((j+1)/B)) * 2^min_exponent``, ``B`` bins per octave.
Values below ``2^min_exponent`` are counted in bin 0 and values at or above
``2^max_exponent`` in the last bin. The exact count, minimum and maximum are
tracked besides. The state has a fixed size whatever the number of batches:
``channels * B * (max_exponent - min_exponent)`` int64 counters.

Error bound. The estimate reproduces ``np.percentile`` (linear
interpolation between the order statistics ``x_k`` and ``x_{k+1}``, rank
``q = p/100 (n - 1)``) with each order statistic replaced by the geometric
centre of its bin, clipped to the exact ``[min, max]``. For values in
``[2^min_exponent, 2^max_exponent)`` each replacement has relative error at
most ``rho = 2^(1/(2B)) - 1``, and so has their convex combination:

    |estimate - np.percentile(values, p)| <= rho * np.percentile(values, p)

(0.27 % with the default ``B = 128``; rank 0 and rank n-1 are exact). For an
order statistic below ``2^min_exponent`` the error is at most
``2^min_exponent`` in absolute terms.
"""

from __future__ import annotations

import numpy as np

__all__ = ["UPDATE_BLOCK", "StreamingPercentile"]

#: values per histogram update step (bounds the temporaries of :meth:`StreamingPercentile.update`)
UPDATE_BLOCK = 1 << 20


class StreamingPercentile:
    """Bounded-memory percentile of the positive values of a stream of batches.

    Parameters
    ----------
    channels : None for one statistic over all values, else the number of
        channels (axis 1 of every batch) with one statistic each.
    bins_per_octave : ``B``; the relative error bound is ``2^(1/(2B)) - 1``.
    min_exponent, max_exponent : the finely binned range is
        ``[2^min_exponent, 2^max_exponent)``.
    """

    def __init__(
        self, channels: int | None = None, bins_per_octave: int = 128, min_exponent: int = -24, max_exponent: int = 24
    ):
        if bins_per_octave < 1 or max_exponent <= min_exponent:
            raise ValueError("need bins_per_octave >= 1 and max_exponent > min_exponent")
        self.channels = channels
        self.bins_per_octave = int(bins_per_octave)
        self.min_exponent = int(min_exponent)
        self.max_exponent = int(max_exponent)
        self.bins = self.bins_per_octave * (self.max_exponent - self.min_exponent)
        rows = 1 if channels is None else int(channels)
        self.counts = np.zeros((rows, self.bins), np.int64)
        self.minimum = np.full(rows, np.inf)
        self.maximum = np.full(rows, -np.inf)

    @property
    def relative_error(self) -> float:
        """The bound ``rho``: estimates are within ``rho`` (relative) of ``np.percentile``."""
        return float(2.0 ** (1.0 / (2 * self.bins_per_octave)) - 1.0)

    @property
    def nbytes(self) -> int:
        """Size of the state in bytes (independent of how many values were seen)."""
        return int(self.counts.nbytes + self.minimum.nbytes + self.maximum.nbytes)

    @property
    def count(self) -> np.ndarray:
        """Number of positive values seen, per row (one row, or one per channel)."""
        return self.counts.sum(axis=1)

    def update(self, batch: np.ndarray) -> None:
        """Add the positive values of ``batch`` (shape (N, C, ...) when per channel).

        The values are taken in blocks of at most :data:`UPDATE_BLOCK`, so the
        temporaries (about 40 bytes per value) stay bounded whatever the batch.
        """
        batch = np.asarray(batch)
        if self.channels is None:
            rows = [batch.reshape(1, -1)]
        else:
            if batch.ndim < 2 or batch.shape[1] != self.channels:
                raise ValueError(f"expected {self.channels} channels on axis 1, got shape {batch.shape}")
            rows = [sample.reshape(self.channels, -1) for sample in batch]  # views: no transposed copy
        for values in rows:
            step = max(1, UPDATE_BLOCK // max(values.shape[0], 1))
            for start in range(0, values.shape[1], step):
                self._update_block(values[:, start : start + step])

    def _update_block(self, values: np.ndarray) -> None:
        positive = values > 0
        rows, cols = np.nonzero(positive)
        if rows.size == 0:
            return
        v = values[rows, cols].astype(np.float64)
        index = np.floor(np.log2(v) * self.bins_per_octave).astype(np.int64) - self.min_exponent * self.bins_per_octave
        np.clip(index, 0, self.bins - 1, out=index)
        flat = np.bincount(rows * self.bins + index, minlength=self.counts.size)
        self.counts += flat.reshape(self.counts.shape)
        masked = np.where(positive, values, np.inf)
        self.minimum = np.minimum(self.minimum, masked.min(axis=1))
        masked = np.where(positive, values, -np.inf)
        self.maximum = np.maximum(self.maximum, masked.max(axis=1))

    def _centre(self, bin_index: np.ndarray) -> np.ndarray:
        return 2.0 ** ((bin_index + 0.5) / self.bins_per_octave + self.min_exponent)

    def percentile(self, p: float) -> np.ndarray:
        """The p-th percentile of the positive values, per row; NaN where none was seen.

        Returns a float64 array of shape () without channels, else (channels,).
        """
        if not 0 <= p <= 100:
            raise ValueError(f"percentile {p} is not in [0, 100]")
        result = np.full(self.counts.shape[0], np.nan)
        for row in range(self.counts.shape[0]):
            n = int(self.counts[row].sum())
            if n == 0:
                continue
            rank = p / 100.0 * (n - 1)
            k = int(np.floor(rank))
            fraction = rank - k
            cumulative = np.cumsum(self.counts[row])
            estimates = []
            for order in (k, min(k + 1, n - 1)):
                if order == 0:
                    estimates.append(self.minimum[row])
                elif order == n - 1:
                    estimates.append(self.maximum[row])
                else:
                    j = int(np.searchsorted(cumulative, order, side="right"))
                    estimates.append(float(np.clip(self._centre(j), self.minimum[row], self.maximum[row])))
            result[row] = estimates[0] + fraction * (estimates[1] - estimates[0])
        return result[0] if self.channels is None else result
