"""Shifted-window attention against a naive per-token computation in numpy (Swin Section 3.2).

The reference never rolls or partitions: a query at original position (i, j) attends to the keys in the
same window of the grid displaced by the shift, except those that are a window or more away in the original
image (the cyclic roll put them side by side; the real neighbourhood is contiguous). The relative position
bias is looked up from the original offset.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lgmm_jax.models import swin


def naive_window_attention(x, params, num_heads, window, shift):
    """Every token attends to its neighbours by the rule above, written over token pairs; float64."""
    x = np.asarray(x, np.float64)
    batch, height, width, channels = x.shape
    head_dim = channels // num_heads
    qkv = x @ np.asarray(params["qkv"]["kernel"], np.float64) + np.asarray(params["qkv"]["bias"])
    qkv = qkv.reshape(batch, height * width, 3, num_heads, head_dim)
    query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, N, heads, head_dim]
    table = np.asarray(params["relative_position_bias_table"], np.float64)  # [(2w-1)^2, heads]

    grid = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    rows, cols = grid[0].reshape(-1), grid[1].reshape(-1)  # original coordinates of the tokens
    window_row, window_col = (rows - shift) % height // window, (cols - shift) % width // window
    row_offset, col_offset = rows[:, None] - rows[None, :], cols[:, None] - cols[None, :]  # query - key
    allowed = (
        (window_row[:, None] == window_row[None, :])
        & (window_col[:, None] == window_col[None, :])
        & (np.abs(row_offset) < window)
        & (np.abs(col_offset) < window)
    )
    table_row = np.where(allowed, (row_offset + window - 1) * (2 * window - 1) + col_offset + window - 1, 0)
    logits = np.einsum("bqhd,bkhd->bhqk", query, key) / np.sqrt(head_dim)
    logits = np.where(allowed, logits + table[table_row].transpose(2, 0, 1), -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = np.einsum("bhqk,bkhd->bqhd", weights, value).reshape(batch, height, width, channels)
    return out @ np.asarray(params["proj"]["kernel"], np.float64) + np.asarray(params["proj"]["bias"])


@pytest.mark.parametrize(
    "size,window_size,shift_size,expected_window,expected_shift",
    [
        (12, 4, 2, 4, 2),  # SW-MSA, 3x3 windows
        (8, 4, 2, 4, 2),  # SW-MSA, 2x2 windows: every window holds wrapped tokens
        (12, 4, 0, 4, 0),  # W-MSA
        (8, 8, 4, 8, 0),  # map no larger than the window: one window, no shift
        (4, 7, 3, 4, 0),  # map smaller than the window (the last Swin stage at small inputs)
    ],
)
def test_shifted_window_attention_matches_naive_per_token_attention(
    size, window_size, shift_size, expected_window, expected_shift
):
    num_heads, channels = 2, 8
    attention = swin.ShiftedWindowAttention(num_heads, window_size, shift_size)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, size, size, channels)).astype(np.float32)
    # Random parameters of the right shapes (the bias table far from zero, so a wrong lookup shows).
    shapes = jax.eval_shape(attention.init, jax.random.key(0), x)["params"]
    params = jax.tree.map(lambda s: rng.normal(scale=0.5, size=s.shape).astype(np.float32), shapes)
    expected = naive_window_attention(x, params, num_heads, expected_window, expected_shift)
    actual = jax.jit(attention.apply)({"params": params}, x)
    np.testing.assert_allclose(actual, expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("size,window,shift", [(8, 4, 2), (12, 4, 2), (14, 7, 3), (16, 4, 1)])
def test_shifted_window_mask_allows_exactly_the_pairs_contiguous_before_the_roll(size, window, shift):
    mask = swin.shifted_window_mask(size, size, window, shift)
    windows_per_side = size // window
    assert mask.shape == (windows_per_side**2, window * window, window * window)
    for window_row, window_col in itertools.product(range(windows_per_side), repeat=2):
        # Original coordinates of the tokens of this window of the rolled map.
        rows = [(window_row * window + a + shift) % size for a in range(window)]
        cols = [(window_col * window + b + shift) % size for b in range(window)]
        tokens = [(r, c) for r in rows for c in cols]
        expected = np.array(
            [[abs(r1 - r2) < window and abs(c1 - c2) < window for r2, c2 in tokens]
             for r1, c1 in tokens]
        )
        np.testing.assert_array_equal(mask[window_row * windows_per_side + window_col], expected)


def test_window_partition_places_each_pixel_and_round_trips():
    x = np.arange(2 * 8 * 12 * 3).reshape(2, 8, 12, 3)
    windows = np.asarray(swin.window_partition(jnp.asarray(x), 4))
    assert windows.shape == (2, 6, 16, 3)
    for window_row, window_col, a, b in itertools.product(range(2), range(3), range(4), range(4)):
        np.testing.assert_array_equal(
            windows[:, window_row * 3 + window_col, a * 4 + b], x[:, window_row * 4 + a, window_col * 4 + b]
        )
    np.testing.assert_array_equal(swin.window_reverse(windows, 4, 8, 12), x)


def test_relative_position_index_gives_one_row_per_offset():
    window = 3
    index = swin.relative_position_index(window)
    coords = list(itertools.product(range(window), repeat=2))
    offsets = {}
    for (i, (a, b)), (j, (c, d)) in itertools.product(enumerate(coords), repeat=2):
        offsets.setdefault((a - c, b - d), set()).add(int(index[i, j]))
    assert all(len(rows) == 1 for rows in offsets.values())  # same offset, same row
    assert sorted(row for rows in offsets.values() for row in rows) == list(range((2 * window - 1) ** 2))


def test_cifar_swin_stages_work_at_16_8_4_2():
    model = swin.cifar_swin_t()
    images = jnp.zeros((1, 32, 32, 3))

    def block_outputs():
        _, state = model.init_with_output(
            jax.random.key(0), images, train=False, capture_intermediates=True,
            mutable=["params", "intermediates"],
        )
        return {name: value["__call__"][0] for name, value in state["intermediates"].items()
                if name.endswith("_block1")}

    shapes = {name: out.shape for name, out in jax.eval_shape(block_outputs).items()}
    assert shapes == {
        "stage1_block1": (1, 16, 16, 96),
        "stage2_block1": (1, 8, 8, 192),
        "stage3_block1": (1, 4, 4, 384),
        "stage4_block1": (1, 2, 2, 768),
    }
