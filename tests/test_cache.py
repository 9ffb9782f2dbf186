"""Tests for loraedit.cache: content keys and the on-disk tensor cache."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch
from safetensors.torch import load_file

from loraedit.cache import TensorCache, content_key


def all_files(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


class Counter:
    """A compute function that counts its calls."""

    def __init__(self, value):
        self.value = value
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return self.value


# ------------------------------------------------------------------------------ content_key


def test_content_key_is_stable_for_equal_inputs():
    a = torch.arange(12, dtype=torch.float32).view(3, 4)
    b = torch.arange(12, dtype=torch.float32).view(3, 4)  # equal, separate storage
    k = content_key("model", a, "prompt", 3, None)
    assert k == content_key("model", b, "prompt", 3, None)
    assert k == content_key("model", a.clone(), "prompt", 3, None)
    assert len(k) == 32 and int(k, 16) >= 0  # 32 hex digits
    assert content_key("x") == content_key("x")
    # a non-contiguous view hashes like its contiguous copy (same values, same shape)
    t = torch.arange(6.0).view(2, 3).T
    assert content_key(t) == content_key(t.contiguous())


def test_content_key_known_value():
    # pin the format (dtype, shape, raw bytes): a change would silently orphan every existing cache entry
    assert content_key() == hashlib.sha256(b"").hexdigest()[:32]
    assert content_key("a", 3, None) == hashlib.sha256(b"str:'a';int:3;NoneType:None;").hexdigest()[:32]
    t = torch.tensor([1.0, -2.0])
    expected = hashlib.sha256(b"tensor:torch.float32:(2,):" + t.numpy().tobytes()).hexdigest()[:32]
    assert content_key(t) == expected


def test_content_key_differs_for_one_element_change():
    a = torch.zeros(4, 5)
    b = a.clone()
    b[2, 3] = 1e-7
    assert content_key(a) != content_key(b)
    assert content_key("m", a) != content_key("m", b)


def test_content_key_differs_for_dtype_change():
    a = torch.zeros(8, dtype=torch.float32)
    assert content_key(a) != content_key(a.double())
    assert content_key(a) != content_key(a.to(torch.int32))  # same size, same (zero) bytes
    assert content_key(a.half()) != content_key(a.bfloat16())  # same size, same (zero) bytes


def test_content_key_differs_for_shape_change_with_same_bytes():
    a = torch.arange(12, dtype=torch.float32)
    views = [a, a.view(3, 4), a.view(4, 3), a.view(2, 6), a.view(1, 12)]
    keys = {content_key(v) for v in views}
    assert len(keys) == len(views)


def test_content_key_differs_for_strings_order_and_types():
    assert content_key("a") != content_key("b")
    assert content_key("a", "b") != content_key("b", "a")
    assert content_key("ab") != content_key("a", "b")
    assert content_key(1) != content_key("1")
    assert content_key(1) != content_key(1.0)
    assert content_key(None) != content_key("None")
    assert content_key("maxpool") != content_key("nearest")


def test_content_key_tensor_boundaries_are_unambiguous():
    # the bytes of two tensors must not be re-splittable into another pair with the same key
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([3.0])
    c, d = torch.tensor([1.0]), torch.tensor([2.0, 3.0])
    assert content_key(a, b) != content_key(c, d)
    assert content_key(torch.zeros(0)) != content_key(torch.zeros(0, 3))


def test_content_key_empty_and_bool_tensors():
    assert content_key(torch.zeros(0)) == content_key(torch.zeros(0))
    assert content_key(torch.tensor([True, False])) != content_key(torch.tensor([False, True]))


def test_content_key_accepts_scalar_tensors():
    assert content_key(torch.tensor(1.0)) == content_key(torch.tensor(1.0))
    assert content_key(torch.tensor(1.0)) != content_key(torch.tensor(2.0))
    assert content_key(torch.tensor(1.0)) != content_key(torch.tensor([1.0]))  # shape () vs (1,)


# ------------------------------------------------------------------------------ TensorCache


def test_cache_computes_once_then_hits(tmp_path):
    cache = TensorCache(tmp_path)
    value = torch.arange(6, dtype=torch.float32).view(2, 3)
    compute = Counter(value)
    first = cache.get_or_compute("latents", "k1", compute)
    assert compute.calls == 1
    assert (cache.hits, cache.misses) == (0, 1)
    assert torch.equal(first, value)
    second = cache.get_or_compute("latents", "k1", compute)
    third = cache.get_or_compute("latents", "k1", compute)
    assert compute.calls == 1  # never recomputed
    assert (cache.hits, cache.misses) == (2, 1)
    assert torch.equal(second, value) and torch.equal(third, value)
    assert second.dtype == torch.float32 and second.shape == (2, 3)


def test_cache_persists_across_instances(tmp_path):
    value = torch.randn(3, 4, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    TensorCache(tmp_path).get_or_compute("text", "abc", lambda: value)
    other = TensorCache(tmp_path)
    compute = Counter(torch.zeros(1))
    got = other.get_or_compute("text", "abc", compute)
    assert compute.calls == 0
    assert (other.hits, other.misses) == (1, 0)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, value)


def test_cache_keys_and_kinds_are_separate(tmp_path):
    cache = TensorCache(tmp_path)
    a = cache.get_or_compute("latents", "k", lambda: torch.tensor([1.0]))
    b = cache.get_or_compute("latents", "k2", lambda: torch.tensor([2.0]))
    c = cache.get_or_compute("text", "k", lambda: torch.tensor([3.0]))
    assert (a.item(), b.item(), c.item()) == (1.0, 2.0, 3.0)
    assert cache.misses == 3 and cache.hits == 0
    assert cache.get_or_compute("text", "k", lambda: torch.tensor([9.0])).item() == 3.0
    assert cache.get_or_compute("latents", "k", lambda: torch.tensor([9.0])).item() == 1.0


def test_cache_stores_none(tmp_path):
    cache = TensorCache(tmp_path)
    compute = Counter(None)
    assert cache.get_or_compute("clip", "nokey", compute) is None
    assert cache.get_or_compute("clip", "nokey", compute) is None
    assert compute.calls == 1
    assert (cache.hits, cache.misses) == (1, 1)
    path = tmp_path / "clip" / "nokey.safetensors"
    assert path.is_file()
    assert load_file(path) == {}


def test_cache_without_root_never_writes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cache = TensorCache(None)
    assert cache.root is None
    compute = Counter(torch.ones(2))
    for _ in range(3):
        assert torch.equal(cache.get_or_compute("latents", "k", compute), torch.ones(2))
    assert compute.calls == 3  # no cache: computed every time
    assert (cache.hits, cache.misses) == (0, 3)
    assert cache.get_or_compute("clip", "k", lambda: None) is None
    assert os.listdir(tmp_path) == []


def test_cache_entries_are_safetensors_files_under_kind(tmp_path):
    root = tmp_path / "cache"  # does not exist yet
    cache = TensorCache(str(root))  # str accepted
    value = torch.arange(10, dtype=torch.int64)[2:8]  # a view into a larger tensor
    key = content_key("m", value)
    cache.get_or_compute("latents", key, lambda: value)
    cache.get_or_compute("text", "t1", lambda: torch.ones(2, 2))
    assert all_files(root) == sorted([f"latents/{key}.safetensors", "text/t1.safetensors"])
    stored = load_file(root / "latents" / f"{key}.safetensors")
    assert list(stored) == ["value"]
    assert torch.equal(stored["value"], torch.arange(2, 8))  # only the view's elements
    assert stored["value"].dtype == torch.int64


def test_cache_leaves_no_temp_files(tmp_path):
    cache = TensorCache(tmp_path)
    for i in range(3):
        cache.get_or_compute("latents", f"k{i}", lambda i=i: torch.full((4,), float(i)))
    cache.get_or_compute("clip", "none", lambda: None)
    files = all_files(tmp_path)
    assert files == ["clip/none.safetensors", "latents/k0.safetensors", "latents/k1.safetensors",
                     "latents/k2.safetensors"]
    assert not [f for f in files if ".tmp-" in f or os.path.basename(f).startswith(".")]


def test_cache_failed_compute_writes_nothing_and_retries(tmp_path):
    cache = TensorCache(tmp_path)

    def boom():
        raise RuntimeError("encoder out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        cache.get_or_compute("latents", "k", boom)
    assert not (tmp_path / "latents" / "k.safetensors").exists()
    assert [f for f in all_files(tmp_path) if ".tmp-" in f] == []
    compute = Counter(torch.ones(1))
    assert torch.equal(cache.get_or_compute("latents", "k", compute), torch.ones(1))
    assert compute.calls == 1
