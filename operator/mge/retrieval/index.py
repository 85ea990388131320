"""An exact cosine index over one plan's chunks: one float32 matrix, one matrix-vector product per query.

Why not an ANN index or pgvector: a plan holds thousands of chunks, not millions. At 10,000 chunks of 512
dimensions the product is ~5 M multiply-adds, about a millisecond, exact (no recall lost to approximation),
with nothing to build or tune and no Postgres extension to require. `tests/bench/bench_retrieval.py` measures
it against a pure-Python scan.
"""

from collections.abc import Collection, Sequence

import numpy as np
import numpy.typing as npt


class VectorIndex:
    """Chunk ids and their unit vectors; rows are appended as a plan's documents and files are indexed."""

    def __init__(self, dimensions: int) -> None:
        self.dimensions = dimensions
        self.ids: list[str] = []
        self._position: dict[str, int] = {}
        self._matrix: npt.NDArray[np.float32] = np.zeros((0, dimensions), dtype=np.float32)
        self._pending: list[npt.NDArray[np.float32]] = []

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, chunk_id: object) -> bool:
        return chunk_id in self._position

    def add(self, chunk_ids: Sequence[str], vectors: Sequence[Sequence[float]]) -> None:
        """Add new chunks (ids already present are skipped); vectors are normalised here."""
        for chunk_id, vector in zip(chunk_ids, vectors, strict=True):
            if chunk_id in self._position:
                continue
            row = np.asarray(vector, dtype=np.float32)
            if row.shape != (self.dimensions,):
                raise ValueError(
                    f"chunk {chunk_id}: {row.shape[0]} dimensions, the index has {self.dimensions}"
                )
            norm = float(np.linalg.norm(row))
            self._position[chunk_id] = len(self.ids)
            self.ids.append(chunk_id)
            self._pending.append(row / norm if norm else row)

    def _rows(self) -> npt.NDArray[np.float32]:
        if self._pending:
            self._matrix = np.vstack([self._matrix, np.stack(self._pending)])
            self._pending = []
        return self._matrix

    def search(
        self, vector: Sequence[float], k: int, allowed: Collection[str] | None = None
    ) -> list[tuple[str, float]]:
        """The `k` chunks most similar to `vector` (cosine, best first), among `allowed` ids if given."""
        matrix = self._rows()
        if not len(self.ids) or k <= 0:
            return []
        query = np.asarray(vector, dtype=np.float32)
        norm = float(np.linalg.norm(query))
        scores = matrix @ (query / norm if norm else query)
        if allowed is not None:
            mask = np.full(len(self.ids), -np.inf, dtype=np.float32)
            rows = [self._position[i] for i in allowed if i in self._position]
            mask[rows] = 0.0
            scores = scores + mask
        count = min(k, len(self.ids))
        best = np.argpartition(-scores, count - 1)[:count]
        ranked = best[np.argsort(-scores[best], kind="stable")]
        return [(self.ids[i], float(scores[i])) for i in ranked if np.isfinite(scores[i])]
