"""The numbers a Ceph user types: sizes by ``rbd``'s rules, image sizes in whole sectors,
object sizes in their range, and the size limit said as a limit."""

from __future__ import annotations

import errno
import json
import subprocess
from pathlib import Path

import pytest

import rbdpy
from rbdpy.rbd import api as rbdapi
from rbdpy.rbd import image as rbdimage
from tests.cli.conftest import RBDPY, Cli

MIB = 1 << 20


def test_the_cli_follows_rbd(rb: Cli) -> None:
    rb("create", "bare", "--size", "100")  # was 100 bytes
    info = json.loads(rb("info", "bare", "--format", "json").stdout)
    assert info["size"] == 100 * MIB
    rb("resize", "bare", "--size", "200")
    assert json.loads(rb("info", "bare", "--format", "json").stdout)["size"] == 200 * MIB
    rb("create", "bytes", "--size", "1536B", "--object-size", "4096")
    info = json.loads(rb("info", "bytes", "--format", "json").stdout)
    assert (info["size"], info["order"]) == (1536, 12)

    def refused(*args: str, want: str, code: int = 2) -> None:
        r = rb(*args, check=False)
        assert r.returncode == code, (r.stdout, r.stderr)
        assert want in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip().splitlines()[-1].count("rbdpy") == 1

    refused("create", "x", "--size", "1.3K", want="not a whole number of bytes")  # was 1331
    refused("create", "x", "--size", "1331B", want="not a multiple of 512")
    refused("create", "x", "--size", "1M", "--object-size", "0",  # was 4M objects
            want="power of two from 4K to 32M (4096..33554432 bytes)")
    refused("create", "x", "--size", "100P", want="over the limit of 1 PiB")
    # past 2^28 objects: the limit for that object size, from the image layer
    refused("create", "x", "--size", "2T", "--object-size", "4K", code=1,
            want="image size 2 TiB is over the limit of 1 TiB for 4 KiB objects")
    refused("resize", "bare", "--size", "1000B", want="not a multiple of 512")
    assert sorted(rb("ls").stdout.split()) == ["bare", "bytes"]
    rb("rm", "bare")
    rb("rm", "bytes")


def test_the_python_api_holds_the_same_rule(cluster: Path) -> None:
    with rbdpy.connect(str(cluster)) as r:
        for size, why in [(1331, "not a multiple of 512"), (-512, "negative"),
                          (1.5 * MIB, "a number of bytes"),
                          (2 << 40, "over the limit of 1 TiB for 4 KiB objects")]:
            with pytest.raises(rbdimage.ImageError, match=why) as e:
                rbdapi.create_image(r, "odd", size, order=12)  # type: ignore[arg-type]
            assert e.value.errno == errno.EINVAL
        rbdapi.create_image(r, "api", 1 << 20, order=20)
        img = rbdapi.open_image(r, "api")
        with pytest.raises(rbdimage.ImageError, match="not a multiple of 512") as e:
            img.resize(1331)
        assert e.value.errno == errno.EINVAL and img.size == 1 << 20
        img.resize(1536)
        assert img.size == 1536
        img.close()
        rbdapi.remove_image(r, "api")
        assert "odd" not in rbdapi.list_images(r)


def test_an_import_is_whole_sectors(rb: Cli, cluster: Path, tmp_path: Path) -> None:
    """A file of 1331 bytes becomes an image of 1536 (zeros after the file's bytes), as qemu
    shows such a file; from a pipe too."""
    data = bytes(range(256)) * 5 + b"x" * 51
    src = tmp_path / "odd.raw"
    src.write_bytes(data)
    rb("import", str(src), "oddfile")
    with open(src, "rb") as f:
        r = subprocess.run([*RBDPY, "--cluster", str(cluster), "import", "-", "piped"],
                           stdin=f, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for name in ("oddfile", "piped"):
        assert json.loads(rb("info", name, "--format", "json").stdout)["size"] == 1536
        out = rb("export", name, "-", text=False).stdout
        assert out == data + bytes(1536 - len(data))
        rb("rm", name)
