"""Maze generator and shortest-path checks, batched over mazes in numpy.

Independent random walls (the Maze-Hard recipe: 30-50% of the cells) almost never give long
shortest paths on 30x30 (measured: no start had any cell >= 111 moves away in 512 mazes at
each density 0.30..0.50; the farthest cell was ~40-70 moves). So a maze here is a random
spanning-tree maze (randomised depth-first search on the cells at even coordinates, ~50%
walls) with a random fraction in [0, 0.2] of its walls opened (loops, 45-50% walls). The start
is a random free cell; the goal is drawn among the cells whose shortest path from the start
has at least `min_path_length` moves (and, with `unique_path`, is the only shortest path);
mazes without such a cell are redrawn (DataError after MAX_REJECTED_MAZES in a row). The
answer marks the path cells between S and G 'o'.
Tokens: '#' 1 (wall), ' ' 2 (free), 'S' 3, 'G' 4, 'o' 5 (path).
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Bool, Int, Integer
from tqdm import tqdm

from data.common import MAZE_SIZES, count_rejections

WALL, FREE, START, GOAL, PATH = 1, 2, 3, 4, 5
HARD_PATH_LENGTH_30 = 111
"""Default minimum shortest-path length (moves) at 30x30: "longer than 110", as Maze-Hard."""
_BATCH = 64
"""Candidate mazes drawn (and searched) at once."""
MAX_REJECTED_MAZES = 20_000
"""Candidates in a row that may be rejected before the filter counts as unmeetable."""


def default_min_path_length(size: int) -> int:
    """Maze-Hard's threshold scaled by area: 111 at 30x30, 12 at 10x10, 8 at 8x8."""
    return max(1, round(HARD_PATH_LENGTH_30 * size * size / 900))


def _neighbours_or(x: np.ndarray) -> np.ndarray:
    """Sum over the 4 neighbours of each cell of x [m, n, n] (zero outside the grid)."""
    out = np.zeros_like(x)
    out[:, 1:] += x[:, :-1]
    out[:, :-1] += x[:, 1:]
    out[:, :, 1:] += x[:, :, :-1]
    out[:, :, :-1] += x[:, :, 1:]
    return out


def bfs(free: Bool[np.ndarray, "m n n"], start: Bool[np.ndarray, "m n n"]
        ) -> tuple[Int[np.ndarray, "m n n"], Int[np.ndarray, "m n n"]]:
    """Distances from `start` over free cells (-1: unreachable) and the number of shortest
    paths to each cell, capped at 2."""
    dist = np.where(start, 0, -1)
    count = start.astype(np.int64)
    front = start.copy()
    level = 0
    while front.any():
        level += 1
        reach = _neighbours_or(np.where(front, count, 0))
        new = (reach > 0) & free & (dist < 0)
        dist[new] = level
        count = np.where(new, np.minimum(reach, 2), count)
        front = new
    return dist, count


def _trace(dist: np.ndarray, goal: tuple[int, int]) -> list[tuple[int, int]]:
    """Cells strictly between start and goal on one shortest path (walking back from goal)."""
    n = dist.shape[0]
    r, c = goal
    cells = []
    while dist[r, c] > 1:
        for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            rr, cc = r + dr, c + dc
            if 0 <= rr < n and 0 <= cc < n and dist[rr, cc] == dist[r, c] - 1:
                r, c = rr, cc
                break
        cells.append((r, c))
    return cells


def path_is_shortest(question: Integer[np.ndarray, "n n"], answer: Integer[np.ndarray, "n n"]
                     ) -> bool:
    """Whether the PATH cells of `answer` are exactly one shortest S-G path of `question`."""
    free = question != WALL
    start, goal = question == START, question == GOAL
    d = int(bfs(free[None], start[None])[0][0][goal][0])
    on_path = (answer == PATH) | start | goal
    d_path = int(bfs(on_path[None], start[None])[0][0][goal][0])
    return d > 0 and d_path == d and int((answer == PATH).sum()) == d - 1


def _spanning_tree_maze(rng: np.random.Generator, n: int) -> np.ndarray:
    """Free-cell mask [n, n] of a perfect maze: randomised DFS over cells (2i, 2j)."""
    k = (n + 1) // 2
    free = np.zeros((n, n), bool)
    seen = np.zeros((k, k), bool)
    stack = [(int(rng.integers(k)), int(rng.integers(k)))]
    seen[stack[0]] = free[2 * stack[0][0], 2 * stack[0][1]] = True
    while stack:
        i, j = stack[-1]
        nxt = [(i + a, j + b) for a, b in ((0, 1), (1, 0), (0, -1), (-1, 0))
               if 0 <= i + a < k and 0 <= j + b < k and not seen[i + a, j + b]]
        if not nxt:
            stack.pop()
            continue
        ni, nj = nxt[int(rng.integers(len(nxt)))]
        seen[ni, nj] = free[2 * ni, 2 * nj] = free[i + ni, j + nj] = True
        stack.append((ni, nj))
    return free


def _candidates(rng: np.random.Generator, m: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """m mazes: free-cell masks [m, n, n] with some walls opened, and random start masks."""
    free = np.stack([_spanning_tree_maze(rng, n) for _ in range(m)])
    free |= rng.random((m, n, n)) < rng.uniform(0.0, 0.2, size=(m, 1, 1))
    keys = np.where(free, rng.random((m, n, n)), 2.0).reshape(m, -1)
    start = np.zeros((m, n * n), bool)
    start[np.arange(m), np.argmin(keys, axis=1)] = True
    return free, start.reshape(m, n, n)


def generate_mazes(count: int, *, size: int = 30, min_path_length: int | None = None,
                   unique_path: bool = True, seed: int = 0, progress: bool = True
                   ) -> tuple[Int[np.ndarray, "c n n"], Int[np.ndarray, "c n n"],
                              Int[np.ndarray, " c"]]:
    """`count` mazes: question tokens, answer tokens (path marked), shortest-path lengths."""
    if not MAZE_SIZES[0] <= size <= MAZE_SIZES[1]:
        raise ValueError(f"size must be in {MAZE_SIZES[0]}..{MAZE_SIZES[1]}, got {size}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    min_len = default_min_path_length(size) if min_path_length is None else min_path_length
    if min_len < 1:
        raise ValueError(f"min_path_length must be >= 1, got {min_len}")
    if min_len > size * size - 1:
        raise ValueError(f"min_path_length {min_len} is impossible on a {size}x{size} grid")
    rng = np.random.default_rng(seed)
    qs, ans, lengths = [], [], []
    request = f"--min-path-length {min_len}{'' if unique_path else ' --allow-ties'} at --size {size}"
    with tqdm(total=count, desc=f"mazes {size}x{size}", disable=not progress) as bar:
        rejected = 0
        while len(qs) < count:
            free, start = _candidates(rng, _BATCH, size)
            dist, paths = bfs(free, start)
            ok = (dist >= max(min_len, 1)) & ((paths == 1) | (not unique_path))
            keys = np.where(ok, rng.random(ok.shape), -1.0).reshape(len(ok), -1)
            accepted = np.flatnonzero(ok.reshape(len(ok), -1).any(1))
            rejected = count_rejections(rejected, len(accepted), _BATCH,
                                        limit=MAX_REJECTED_MAZES, request=request)
            for k in accepted[: count - len(qs)]:
                g = np.unravel_index(int(np.argmax(keys[k])), (size, size))
                q = np.where(free[k], FREE, WALL)
                q[start[k]] = START
                q[g] = GOAL
                a = q.copy()
                for cell in _trace(dist[k], (int(g[0]), int(g[1]))):
                    a[cell] = PATH
                qs.append(q)
                ans.append(a)
                lengths.append(int(dist[k][g]))
                bar.update(1)
    shape = (-1, size, size)
    return (np.array(qs, np.int64).reshape(shape), np.array(ans, np.int64).reshape(shape),
            np.array(lengths, np.int64))
