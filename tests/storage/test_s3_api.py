"""save / open / get / load / verify / convert against a real S3 API server (moto, see conftest)."""

from __future__ import annotations

import numpy as np
import pytest

import weightvault
from weightvault import storage
from weightvault.errors import CheckpointNotFoundError, ChecksumMismatchError

MiB = 1 << 20


def _keys(client, bucket_url, prefix=""):
    bucket = bucket_url[len("s3://") :]
    out = client.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for o in out.get("Contents", [])]


def _uploads(client, bucket_url):
    bucket = bucket_url[len("s3://") :]
    return client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])


@pytest.mark.parametrize("name", ["m.safetensors", "ckpt"])
def test_roundtrip_small(s3, name):
    bucket, opts, client = s3
    url = f"{bucket}/runs/{name}"
    sd = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "meta": {"step": 3}}
    weightvault.save(sd, url, storage_options=opts)
    got = weightvault.load(url, storage_options=opts, verify=True)
    np.testing.assert_array_equal(got["w"], sd["w"])
    assert got["meta"] == {"step": 3}
    assert weightvault.verify(url, storage_options=opts).checked == 1
    if name == "ckpt":
        assert _keys(client, bucket, "runs/ckpt/")[-1] == "runs/ckpt/model.safetensors.index.json"
        assert "runs/ckpt/COMMITTED" in _keys(client, bucket)


def test_multipart_single_file_with_header_rewrite(s3):
    """12 MiB in 5 MiB parts, 3 in flight: part 1 (header + first data) is sent last, after the
    checksums are written into its header."""
    bucket, opts, client = s3
    opts = {**opts, "part_size": 5 * MiB, "concurrency": 4}
    rng = np.random.default_rng(1)
    sd = {f"t{i}": rng.standard_normal((3 * MiB // 4 // 2,)).astype(np.float32) for i in range(8)}
    url = f"{bucket}/big.safetensors"
    weightvault.save(sd, url, storage_options=opts)
    assert _uploads(client, bucket) == []
    size = client.head_object(Bucket=bucket[5:], Key="big.safetensors")["ContentLength"]
    assert size > 12 * MiB
    got = weightvault.load(url, storage_options=opts, verify=True)
    for k, v in sd.items():
        np.testing.assert_array_equal(got[k], v)
    # the file is a plain safetensors file anyone can read
    from safetensors.numpy import load as st_load

    raw = client.get_object(Bucket=bucket[5:], Key="big.safetensors")["Body"].read()
    np.testing.assert_array_equal(st_load(raw)["t3"], sd["t3"])


def test_get_reads_header_and_that_tensor_only(s3):
    bucket, opts, _ = s3
    opts = {**opts, "part_size": 5 * MiB}
    sd = {f"layer{i}": np.full((MiB // 4,), i, np.float32) for i in range(12)}  # 12 x 1 MiB
    url = f"{bucket}/sharded"
    weightvault.save(sd, url, storage_options=opts, shard_size=4 * MiB)
    storage.stats.reset()
    with weightvault.open(url, storage_options=opts) as r:
        opened = storage.stats.bytes_read
        assert opened < 64 << 10  # COMMITTED is checked by HEAD, manifest.json read: no data
        before = storage.stats.bytes_read
        np.testing.assert_array_equal(r.get("layer7"), sd["layer7"])
        fetched = storage.stats.bytes_read - before
    # the shard's header probe (at most 64 KiB, less than one part) + exactly that tensor
    assert sd["layer7"].nbytes <= fetched <= sd["layer7"].nbytes + (64 << 10)
    assert fetched < 2 * MiB


def test_tampered_object_fails_verification(s3):
    bucket, opts, client = s3
    url = f"{bucket}/t.safetensors"
    weightvault.save({"w": np.arange(4096, dtype=np.float32)}, url, storage_options=opts)
    body = bytearray(client.get_object(Bucket=bucket[5:], Key="t.safetensors")["Body"].read())
    body[-5] ^= 1
    client.put_object(Bucket=bucket[5:], Key="t.safetensors", Body=bytes(body))
    with pytest.raises(ChecksumMismatchError, match="'w'"):
        weightvault.verify(url, storage_options=opts)


def test_uncommitted_prefix_is_absent(s3):
    bucket, opts, client = s3
    url = f"{bucket}/p"
    weightvault.save({"w": np.ones(3)}, url, storage_options=opts)
    client.delete_object(Bucket=bucket[5:], Key="p/COMMITTED")
    with pytest.raises(CheckpointNotFoundError, match="COMMITTED"):
        weightvault.load(url, storage_options=opts)


def test_failed_upload_is_aborted_and_nothing_appears(s3):
    """A source that fails after several parts are up: the multipart upload is aborted."""
    bucket, opts, client = s3
    opts = {**opts, "part_size": 5 * MiB, "concurrency": 3}

    good = np.zeros(6 * MiB // 4, np.float32)

    from weightvault.abc.format import TensorInfo

    class Lazy:
        """A lazy mapping (as convert passes) whose third tensor cannot be produced."""

        names = ["a", "b", "c"]

        def __iter__(self):
            return iter(self.names)

        def __len__(self):
            return 3

        def __getitem__(self, name):
            if name == "c":
                raise OSError("source disk failed")
            return good

        def info(self, name):
            return TensorInfo(name, "float32", good.shape, {})

        def byte_span(self, name):  # DescribedTensors: no verbatim bytes to copy
            return None

    from collections.abc import Mapping

    Mapping.register(Lazy)
    for url in (f"{bucket}/fail.safetensors", f"{bucket}/faildir"):
        with pytest.raises(OSError, match="source disk failed"):
            weightvault.save(Lazy(), url, storage_options=opts)
        assert _keys(client, bucket) == []
        assert _uploads(client, bucket) == []


def test_convert_between_urls_and_local(s3, tmp_path):
    bucket, opts, _ = s3
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    local_pt = tmp_path / "model.pt"
    torch.save(model.state_dict(), local_pt)
    weightvault.convert(local_pt, f"{bucket}/a", storage_options=opts)  # local -> URL
    weightvault.convert(f"{bucket}/a", f"{bucket}/b.safetensors", storage_options=opts)  # streamed
    weightvault.convert(f"{bucket}/b.safetensors", f"{bucket}/c.pt", storage_options=opts)
    back = tmp_path / "back.safetensors"
    weightvault.convert(f"{bucket}/c.pt", back, storage_options=opts)  # URL -> local
    got = weightvault.load(back, framework="torch")
    for k, v in model.state_dict().items():
        assert torch.equal(got[k], v)
    storage.stats.reset()
    weightvault.convert(f"{bucket}/a", f"{bucket}/d", storage_options=opts)
    # URL to URL: every byte read once, no download of whole objects on the side
    total = sum(v.numel() * 4 for v in model.state_dict().values())
    assert storage.stats.bytes_written >= total


@pytest.mark.parametrize("name", ["big.safetensors", "bigdir"])
def test_convert_large_local_file_up_through_file_spans(s3, tmp_path, name):
    """Local -> S3 copies tensors file to file (write_span, one reused buffer): parts must hold
    the bytes as they were, not the buffer's later contents."""
    bucket, opts, client = s3
    opts = {**opts, "part_size": 5 * MiB, "concurrency": 3}
    rng = np.random.default_rng(5)
    sd = {f"t{i}": rng.standard_normal(MiB).astype(np.float32) for i in range(3)}  # 3 x 4 MiB
    local = tmp_path / "src.safetensors"
    weightvault.save(sd, local)
    weightvault.convert(local, f"{bucket}/{name}", storage_options=opts)
    got = weightvault.load(f"{bucket}/{name}", storage_options=opts, verify=True)
    for k, v in sd.items():
        np.testing.assert_array_equal(got[k], v)
    assert _uploads(client, bucket) == []


@pytest.mark.parametrize(
    ("name", "shard_mib"), [("mem.safetensors", 12), ("memdir", 12), ("memdir-puts", 4)]
)  # memdir: 12 MiB shards, multipart; memdir-puts: 4 MiB shards, one PUT each, several in flight
def test_upload_buffers_stay_within_concurrency_parts(s3, monkeypatch, name, shard_mib):
    """Part buffers alive at once (assembled or retained, not yet uploaded) <= concurrency."""
    import threading

    from weightvault.storage import upload
    from weightvault.storage.location import Location

    bucket, opts, _ = s3
    opts = {**opts, "part_size": 5 * MiB, "concurrency": 3}
    lock = threading.Lock()
    alive = {"now": 0, "peak": 0}
    real_take, real_part_full, real_upload = (
        upload.ObjectWriter._take, upload.ObjectWriter._part_full, upload.ObjectWriter._upload_part,
    )  # fmt: skip

    def count(delta):
        with lock:
            alive["now"] += delta
            alive["peak"] = max(alive["peak"], alive["now"])

    bodies: set[int] = set()
    real_write_bytes = Location.write_bytes

    def take(self):
        data = real_take(self)
        count(len(data))
        bodies.add(id(data))
        return data

    def write_bytes(self, data, **kw):  # a whole object's one PUT
        real_write_bytes(self, data, **kw)
        if id(data) in bodies:
            count(-len(data))

    def part_full(self):
        retaining = self.rewritable_head and self._filling_first()
        if retaining:
            count(len(self._buf))
        real_part_full(self)

    def upload_part(self, number, part):
        real_upload(self, number, part)
        count(-len(part))

    monkeypatch.setattr(upload.ObjectWriter, "_take", take)
    monkeypatch.setattr(upload.ObjectWriter, "_part_full", part_full)
    monkeypatch.setattr(upload.ObjectWriter, "_upload_part", upload_part)
    monkeypatch.setattr(Location, "write_bytes", write_bytes)
    sd = {f"t{i}": np.full(MiB, i, np.float32) for i in range(8)}  # 32 MiB: 7 parts
    weightvault.save(sd, f"{bucket}/{name}", storage_options=opts, shard_size=shard_mib * MiB)
    assert alive["peak"] > 5 * MiB  # parts were really in flight together
    assert alive["peak"] <= 3 * 5 * MiB + (64 << 10), alive["peak"]  # + the header


def test_objects_up_to_single_put_size_are_one_put(s3, moto_endpoint):
    """A shard up to ``single_put_size`` is one PUT; a larger one a multipart upload of
    ``part_size`` parts; both read back exactly (through a proxy that logs the requests)."""
    from faultproxy import FaultProxy
    from s3support import s3_options

    bucket, _, _ = s3
    rng = np.random.default_rng(7)
    state = {"small": rng.standard_normal(7 * MiB // 4).astype(np.float32),  # 7 MiB shard
             "large": rng.standard_normal(3 * MiB).astype(np.float32)}  # 12 MiB shard
    with FaultProxy(moto_endpoint) as proxy:
        opts = s3_options(proxy.endpoint, part_size=5 * MiB, single_put_size=8 * MiB)
        weightvault.save(state, f"{bucket}/mix", storage_options=opts, shard_size=4 * MiB)
        log = list(proxy.log)
    with weightvault.open(f"{bucket}/mix", storage_options=opts) as reader:
        small_shard = reader.manifest["tensors"]["small"]["file"]
        large_shard = reader.manifest["tensors"]["large"]["file"]
        for name, value in state.items():
            np.testing.assert_array_equal(reader.get(name), value)
    puts = {path.split("?")[0].rsplit("/", 1)[-1]: path for method, path, _ in log if method == "PUT"}
    parts = [path for method, path, _ in log if method == "PUT" and "partNumber=" in path]
    assert "partNumber=" not in puts[small_shard]  # one PUT, though larger than a part
    assert len(parts) == 3 and all(large_shard in path for path in parts)  # 12 MiB / 5 MiB parts
    assert not any(small_shard in path and "uploads" in path for _, path, _ in log)
