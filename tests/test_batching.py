"""Tests for binarybert_jax.data.batching: synthetic encoded arrays for indices, masks and
lengths, and the real pipeline (shipped SST-2 slice, MiniLM tokenizer) end to end."""

import pathlib

import numpy as np
import pytest

from binarybert_jax.data import batching, encode, glue, tasks

SLICE = pathlib.Path(__file__).resolve().parents[1] / "data" / "glue_slice"


def fake_encoded(n: int = 103, max_length: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    """Arrays shaped like encode_examples' output; row i's tokens all equal i + 1000."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, max_length + 1, n).astype(np.int32)
    mask = (np.arange(max_length) < lengths[:, None]).astype(np.int32)
    return {
        "input_ids": (np.arange(n, dtype=np.int32)[:, None] + 1000) * mask,
        "token_type_ids": np.zeros((n, max_length), np.int32),
        "attention_mask": mask,
        "labels": rng.integers(0, 2, n).astype(np.int32),
        "lengths": lengths,
    }


def collect(arrays, batch_size, **kwargs) -> list[dict[str, np.ndarray]]:
    kwargs.setdefault("process_index", 0)
    kwargs.setdefault("process_count", 1)
    return list(batching.iterate_batches(arrays, batch_size, **kwargs))


def order(batches) -> np.ndarray:
    return np.concatenate([b["example_index"] for b in batches])


def test_shuffle_is_deterministic_per_seed_and_epoch():
    arrays = fake_encoded()
    a = order(collect(arrays, 16, shuffle=True, seed=3, epoch=0))
    assert np.array_equal(a, order(collect(arrays, 16, shuffle=True, seed=3, epoch=0)))
    assert not np.array_equal(a, order(collect(arrays, 16, shuffle=True, seed=3, epoch=1)))
    assert not np.array_equal(a, order(collect(arrays, 16, shuffle=True, seed=4, epoch=0)))
    # Training drops the remainder: 6 full batches, no example twice, none padded.
    assert len(a) == 96 and len(set(a.tolist())) == 96


def test_eval_counts_every_example_once():
    arrays = fake_encoded(n=103)
    batches = collect(arrays, 16, shuffle=False)
    assert len(batches) == batching.num_batches(103, 16, drop_remainder=False) == 7
    assert all(b["input_ids"].shape == (16, 64) for b in batches)
    mask = np.concatenate([b["example_mask"] for b in batches])
    index = order(batches)
    assert mask.dtype == np.float32 and mask.sum() == 103
    np.testing.assert_array_equal(index[mask == 1], np.arange(103))
    assert (index[mask == 0] == -1).all()
    # Padding rows are copies of a real row, so the model never sees an all-masked input.
    last = batches[-1]
    assert (last["attention_mask"][last["example_mask"] == 0].sum(1) > 0).all()
    labels = np.concatenate([b["labels"] for b in batches])[mask == 1]
    np.testing.assert_array_equal(labels, arrays["labels"])


def test_training_can_keep_a_padded_remainder():
    batches = collect(fake_encoded(n=103), 16, shuffle=True, drop_remainder=False)
    index = order(batches)
    assert sorted(index[index >= 0].tolist()) == list(range(103))
    assert batches[-1]["example_mask"].sum() == 103 - 96


@pytest.mark.parametrize("buckets", [None, (16, 32, 48)])
@pytest.mark.parametrize("shuffle", [True, False])
def test_host_slices_concatenate_to_the_global_batch(buckets, shuffle):
    arrays = fake_encoded(n=150)
    kwargs = dict(shuffle=shuffle, seed=7, epoch=2, bucket_lengths=buckets,
                  group_by_length=buckets is not None)
    whole = collect(arrays, 16, **kwargs)
    for count in (2, 4):
        per_host = [collect(arrays, 16, process_index=p, process_count=count, **kwargs)
                    for p in range(count)]
        assert all(len(batches) == len(whole) for batches in per_host)
        for step, global_batch in enumerate(whole):
            for key, value in global_batch.items():
                parts = [per_host[p][step][key] for p in range(count)]
                assert all(part.shape[0] == 16 // count for part in parts)
                np.testing.assert_array_equal(np.concatenate(parts), value)


def test_bucketing_uses_allowed_lengths_and_keeps_every_token():
    arrays = fake_encoded(n=400, max_length=64)
    buckets = (16, 32, 48)  # 64, the arrays' width, is always added.
    for shuffle in (True, False):
        batches = collect(arrays, 8, shuffle=shuffle, bucket_lengths=buckets)
        widths = {b["input_ids"].shape[1] for b in batches}
        assert widths <= {16, 32, 48, 64}
        for b in batches:
            width = b["input_ids"].shape[1]
            assert all(b[k].shape == (8, width) for k in batching.MODEL_INPUTS)
            assert b["lengths"].max() <= width
            assert width == min(x for x in (16, 32, 48, 64) if x >= b["lengths"].max())
            np.testing.assert_array_equal(b["attention_mask"].sum(1), b["lengths"])
            np.testing.assert_array_equal(
                b["input_ids"], arrays["input_ids"][b["example_index"], :width])


def test_length_grouping_cuts_padding_and_stays_random():
    arrays = fake_encoded(n=800, max_length=128)
    buckets = batching.default_bucket_lengths(128)
    grouped = collect(arrays, 16, shuffle=True, bucket_lengths=buckets, group_by_length=True)
    ungrouped = collect(arrays, 16, shuffle=True, bucket_lengths=buckets, group_by_length=False)
    tokens = lambda batches: sum(b["input_ids"].size for b in batches)
    assert tokens(grouped) < 0.8 * tokens(ungrouped)
    assert sorted(order(grouped).tolist()) == list(range(800))
    again = collect(arrays, 16, shuffle=True, bucket_lengths=buckets, group_by_length=True,
                    epoch=1)
    assert not np.array_equal(order(grouped), order(again))
    # Batch order is shuffled, not sorted by length.
    widths = [b["input_ids"].shape[1] for b in grouped]
    assert widths != sorted(widths)


def test_start_batch_resumes_mid_epoch():
    arrays = fake_encoded()
    full = collect(arrays, 8, shuffle=True, seed=1, epoch=3)
    resumed = collect(arrays, 8, shuffle=True, seed=1, epoch=3, start_batch=5)
    assert len(resumed) == len(full) - 5
    np.testing.assert_array_equal(order(resumed), order(full[5:]))


def test_batching_argument_errors():
    arrays = fake_encoded()
    with pytest.raises(ValueError, match="divisible"):
        batching.iterate_batches(arrays, 10, shuffle=False, process_index=0, process_count=4)
    no_lengths = {k: v for k, v in arrays.items() if k != "lengths"}
    with pytest.raises(ValueError, match="lengths"):
        batching.iterate_batches(no_lengths, 8, shuffle=False, bucket_lengths=(16,),
                                 process_index=0, process_count=1)
    with pytest.raises(ValueError, match="leading size"):
        batching.iterate_batches({**arrays, "labels": arrays["labels"][:5]}, 8, shuffle=False,
                                 process_index=0, process_count=1)


def test_default_buckets_and_process_defaults():
    assert batching.default_bucket_lengths(128) == (16, 32, 48, 64, 80, 96, 112, 128)
    assert batching.default_bucket_lengths(64, step=32) == (32, 64)
    assert batching.default_bucket_lengths(40) == (16, 32, 40)
    # Without explicit process arguments, JAX's (single-process here) values are used.
    batches = list(batching.iterate_batches(fake_encoded(), 8, shuffle=False))
    assert batches[0]["input_ids"].shape == (8, 64)


def test_real_pipeline_end_to_end(tokenizer):
    examples = glue.read_examples(SLICE, tasks.get_task("sst-2"), "dev")[:40]
    arrays = encode.encode_examples(tokenizer, examples, 64)
    batches = collect(arrays, 16, shuffle=False,
                      bucket_lengths=batching.default_bucket_lengths(64))
    assert sum(b["example_mask"].sum() for b in batches) == 40
    for b in batches:
        assert b["input_ids"].shape[1] < 64  # SST-2 dev's first sentences fit in fewer tokens.
        np.testing.assert_array_equal(b["attention_mask"].sum(1), b["lengths"])
        real, width = b["example_mask"] == 1, b["input_ids"].shape[1]
        np.testing.assert_array_equal(b["input_ids"][real],
                                      arrays["input_ids"][b["example_index"][real], :width])
