"""Classification of every example file name in reference/backup-files.md, and more."""
from __future__ import annotations

import pytest

from offsite.backupfiles import Level, Role, classify, is_excluded, md5_sidecar

SP = "shadowprotect"

# name, level, role, (diff, inc), volume, base
SHADOWPROTECT = [
    ("C_VOL-b001.spf", Level.BASE, Role.IMAGE, (0, 0), "c_vol", 1),
    ("C_VOL-b001-i005.spi", Level.INTRA, Role.IMAGE, (0, 5), "c_vol", 1),
    ("C_VOL-b001-i063-cd.spi", Level.DAILY, Role.IMAGE, (0, 63), "c_vol", 1),
    ("C_VOL-b001-i420-cd-cw.spi", Level.WEEKLY, Role.IMAGE, (0, 420), "c_vol", 1),
    ("D_VOL-b001-i097-cm.spi", Level.MONTHLY, Role.IMAGE, (0, 97), "d_vol", 1),
    ("D_VOL-b001-i2976-cd-cw-cm.spi", Level.MONTHLY, Role.IMAGE, (0, 2976), "d_vol", 1),
    ("D_VOL-b001-i3100-cd-cm-cr.spi", Level.ROLLING, Role.IMAGE, (0, 3100), "d_vol", 1),
    ("C_Vol-b001-d001-i000.spi", Level.INTRA, Role.IMAGE, (1, 0), "c_vol", 1),
    ("System Reserved_VOL-b002.spf", Level.BASE, Role.IMAGE, (0, 0), "system reserved_vol", 2),
    # more from the grammar
    ("C_VOL-b001-i026-cw.spi", Level.WEEKLY, Role.IMAGE, (0, 26), "c_vol", 1),  # short style
    ("C_VOL-b001-i026.spi", Level.INTRA, Role.IMAGE, (0, 26), "c_vol", 1),
    ("C_VOL-b001-i026-cd.spi", Level.DAILY, Role.IMAGE, (0, 26), "c_vol", 1),
    ("SRV01_C_VOL-b001-i1971.spi", Level.INTRA, Role.IMAGE, (0, 1971), "srv01_c_vol", 1),
    ("C_VOL-b001-d000-i000.spf", Level.BASE, Role.IMAGE, (0, 0), "c_vol", 1),  # old style base
    ("c_vol-B001-I005.SPI", Level.INTRA, Role.IMAGE, (0, 5), "c_vol", 1),  # any case
    ("C_VOL-b001.sp2", Level.BASE, Role.IMAGE, (0, 0), "c_vol", 1),  # piece of a spanned image
    ("C_VOL-b001-i005.md5", Level.INTRA, Role.MD5, (0, 5), "c_vol", 1),
    ("C_VOL-b001.md5", Level.BASE, Role.MD5, (0, 0), "c_vol", 1),
    ("C_VOL-b001-i063-cd.md5", Level.DAILY, Role.MD5, (0, 63), "c_vol", 1),
    ("C_VOL-b001.spk", Level.BASE, Role.KEY, (0, 0), "c_vol", 1),
    ("C_VOL-b001-i005.bitmap", Level.INTRA, Role.BITMAP, (0, 5), "c_vol", 1),
    ("Data-b01_VOL-b003-i007.spi", Level.INTRA, Role.IMAGE, (0, 7), "data-b01_vol", 3),
]


@pytest.mark.parametrize("name,level,role,point,volume,base", SHADOWPROTECT)
def test_shadowprotect_names(name, level, role, point, volume, base):
    f = classify(name)
    assert f is not None
    assert (f.family, f.level, f.role, f.point) == (SP, level, role, point)
    assert f.chain == (SP, ".", volume, base)


# name, prefix, (increment, file number)
MACRIUM = [
    ("4F6F6CACA58B077D-00-00.mrimg", "4f6f6caca58b077d", (0, 0)),
    ("D684BA87241263E2-demo-00-00.mrimgx", "d684ba87241263e2-demo", (0, 0)),
    ("onyx-system3-00-00.mrimg", "onyx-system3", (0, 0)),
    ("4F6F6CACA58B077D-03-04.mrimg", "4f6f6caca58b077d", (3, 4)),
    ("4F6F6CACA58B077D-120-121.mrbak", "4f6f6caca58b077d", (120, 121)),
    ("files-01-01.mrbakx", "files", (1, 1)),
]


@pytest.mark.parametrize("name,prefix,point", MACRIUM)
def test_macrium_names(name, prefix, point):
    f = classify(f"SRV01/{{GUID}}/{name}")
    assert f is not None and f.family == "macrium" and f.role is Role.MACRIUM
    assert f.chain == ("macrium", "srv01/{guid}", prefix) and f.point == point


@pytest.mark.parametrize("path", [
    "Incrementals/C_VOL-b001-i005-cd.spi",
    "sub/incrementals/C_VOL-b001-i005-cd.spi",
    "C_VOL-b001-i005.spwb",
    "$RECYCLE.BIN/C_VOL-b001.spf",
    "System Volume Information/C_VOL-b001.spf",
    ".zfs/snapshot/x/C_VOL-b001.spf",
    ".snapshot/hourly.0/C_VOL-b001.spf",
    "#snapshot/C_VOL-b001.spf",
    ".hidden.spf",
    "~C_VOL-b001.spf",
    "C_VOL-b001.spf~",
    "C_VOL-b001.spf.tmp",
    ".offsite/staging/abc.part",
])
def test_never_replicated(path):
    assert is_excluded(path)
    assert classify(path) is None


@pytest.mark.parametrize("name", [
    "readme.txt", "C_VOL-b001-i005-cd-bad.log", "C_VOL.spi", "C_VOL-b001-x005.spi",
    "image-0-0.mrimg", "C_VOL-b001-i005-cx.spi", "Macrium Repository Information.txt.bak",
])
def test_unknown_files_are_not_backup_files(name):
    assert classify(name) is None


@pytest.mark.parametrize("path", ["Macrium Repository Information.txt", "macrium repository information.TXT",
                                  "site-b/Macrium Repository Information.txt"])
def test_the_site_manager_repository_file_is_a_macrium_file(path):
    f = classify(path)
    assert f is not None and f.family == "macrium" and f.role is Role.MACRIUM
    assert classify(path, "macrium") == f and classify(path, "shadowprotect") is None


def test_family_restricts_classification():
    assert classify("C_VOL-b001.spf", "macrium") is None
    assert classify("onyx-00-00.mrimg", "shadowprotect") is None
    assert classify("onyx-00-00.mrimg", "macrium") is not None


def test_chain_order_within_a_chain():
    names = [
        "C_VOL-b001-i026-cd-cw.spi", "C_VOL-b001-i026.spi", "C_VOL-b001-i026-cd.spi",
        "C_VOL-b001.spk", "C_VOL-b001-i005.md5", "C_VOL-b001.spf", "C_VOL-b001-i005.spi",
        "C_VOL-b001-i026-cd-cw-cm.spi", "C_VOL-b001.md5", "C_VOL-b001-i026-cd-cm-cr.spi",
    ]
    ordered = sorted(names, key=lambda n: classify(n).key)
    assert ordered == [
        "C_VOL-b001.spk", "C_VOL-b001.spf", "C_VOL-b001.md5", "C_VOL-b001-i005.spi",
        "C_VOL-b001-i005.md5", "C_VOL-b001-i026.spi", "C_VOL-b001-i026-cd.spi",
        "C_VOL-b001-i026-cd-cw.spi", "C_VOL-b001-i026-cd-cw-cm.spi", "C_VOL-b001-i026-cd-cm-cr.spi",
    ]


def test_chains_are_per_folder_volume_and_base():
    a, b, c = classify("C_VOL-b001.spf"), classify("C_VOL-b002.spf"), classify("x/C_VOL-b001.spf")
    assert len({a.chain, b.chain, c.chain}) == 3


def test_md5_sidecar_name():
    assert md5_sidecar(classify("a/C_VOL-b001-i005.spi")) == "a/C_VOL-b001-i005.md5"
    assert md5_sidecar(classify("C_VOL-b001-i063-cd.spi")) == "C_VOL-b001-i063-cd.md5"
    assert md5_sidecar(classify("C_VOL-b001.md5")) is None
