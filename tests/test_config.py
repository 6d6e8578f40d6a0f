"""agent.toml: valid configs parse into typed values; each malformed one is one line, exit 2."""
from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tomllib
from conftest import run_offsite

from offsite import config
from offsite.cli import main

ROOT = Path(__file__).resolve().parent.parent
GOOD_JOB = """
[[jobs]]
name = "fs"
source = "src"
target = { type = "local", path = "drive" }
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "drive").mkdir()
    (tmp_path / "drive" / "a" / "pc").mkdir(parents=True)
    return tmp_path


def write(folder: Path, text: str, mode: int = 0o600) -> Path:
    p = folder / "agent.toml"
    p.write_text(textwrap.dedent(text))
    os.chmod(p, mode)
    return p


def test_full_example_parses(folder):
    os.environ["OFFSITE_TEST_SECRET"] = "s3cret-env"
    (folder / "pw.txt").write_text("s3cret-file\n")
    p = write(folder, """
        [agent]
        state_dir = "state"
        log_level = "debug"
        settle = "30s"
        rescan = "1h"
        max_connections = 8
        bandwidth = "100Mbps"
        retry_for = "10m"
        metrics = "127.0.0.1:9108"

        [locations.dr-site]
        type = "sftp"
        host = "dr.example.net"
        port = 22
        path = "/srv/backups"
        username = "offsite"
        key_file = "id_ed25519"
        known_hosts = "known_hosts"

        [locations.share]
        type = "smb"
        path = '\\\\nas\\backups\\offsite'
        username = 'CORP\\backup'
        password_env = "OFFSITE_TEST_SECRET"

        [locations.ftp]
        type = "ftps"
        host = "ftp.example.net"
        path = "/in"
        username = "u"
        password_file = "pw.txt"

        [locations.cloud]
        type = "s3"
        bucket = "b"
        endpoint = "http://127.0.0.1:9000"
        object_lock_days = 30

        [[jobs]]
        name = "fileserver"
        source = "src"
        location = "dr-site"
        folder = "fileserver"
        mode = "all"
        include_intra_daily = true
        replicate_base = false
        mirror_deletes = true
        max_deletes = 5
        family = "shadowprotect"
        bandwidth = "20Mbps"
        windows = [
          { days = ["mon", "tue", "wed", "thu", "fri"], start = "19:00", end = "07:00" },
          { days = ["sat", "sun"] },
        ]

        [[jobs]]
        name = "cloud"
        source = "src"
        location = "cloud"

        [[jobs]]
        name = "usb"
        source = "src"
        target = { type = "local", path = "drive" }
        """)
    c = config.load(p)
    assert c.agent.state_dir == folder / "state"
    assert c.agent.settle == 30 and c.agent.rescan == 3600 and c.agent.retry_for == 600
    assert c.agent.bandwidth == 100e6 / 8
    fs = c.job("fileserver")
    assert fs.location.type == "sftp" and fs.location.options["port"] == 22
    assert fs.location.options["key_file"] == folder / "id_ed25519"
    assert fs.bandwidth == 20e6 / 8 and fs.replicate_base is False and fs.max_deletes == 5
    assert fs.windows[0].start == dt.time(19) and fs.windows[0].end == dt.time(7)
    assert fs.windows[1].end is None and fs.windows[1].days == frozenset({5, 6})
    assert c.job("cloud").mode == "daily-monthly"  # the default for s3 targets
    assert c.job("usb").mode == "all" and c.job("usb").folder == "usb"
    share = c.locations["share"].options
    assert share["username"] == "backup" and share["domain"] == "CORP"
    assert share["password"].reveal() == "s3cret-env"
    assert "s3cret" not in repr(share)
    assert c.locations["ftp"].options["password"].reveal() == "s3cret-file"
    with pytest.raises(dataclasses.FrozenInstanceError):
        fs.mode = "x"  # frozen


@pytest.mark.parametrize("text,bandwidth", [
    ('"off"', None), ('"1Kbps"', 125.0), ('"12MB/s"', 12e6), ('"512KiB/s"', 512 * 1024.0),
    ('"1.5Gbps"', 1.5e9 / 8), ('"2 MiB/s"', 2 * 1024.0**2), ('"999Gbps"', 999e9 / 8),
])
def test_bandwidth_units(folder, text, bandwidth):
    c = config.load(write(folder, f"[agent]\nbandwidth = {text}\n" + GOOD_JOB))
    assert c.agent.bandwidth == pytest.approx(bandwidth) if bandwidth else c.agent.bandwidth is None


def test_user_at_domain_fills_domain(folder):
    c = config.load(write(folder, """
        [locations.s]
        type = "smb"
        path = "//nas/share"
        username = "backup@corp.example"
        """ + GOOD_JOB))
    assert (c.locations["s"].options["username"], c.locations["s"].options["domain"]) == ("backup", "corp.example")


# (config text, what the one line must contain)
BAD = [
    ("[agent\n", "not valid TOML"),
    ("[agent]\nnope = 1\n" + GOOD_JOB, "agent.nope: unknown key"),
    ("[agnet]\n" + GOOD_JOB, "agnet: unknown key"),
    ("[agent]\nsettle = 30\n" + GOOD_JOB, 'agent.settle: must be a duration'),
    ("[agent]\nsettle = \"30 sec\"\n" + GOOD_JOB, "agent.settle: must be a duration"),
    ("[agent]\nrescan = \"0s\"\n" + GOOD_JOB, "agent.rescan: must be at least 1s"),
    ("[agent]\nretry_for = \"-5m\"\n" + GOOD_JOB, "agent.retry_for: must be a duration"),
    ("[agent]\nbandwidth = \"20mbit\"\n" + GOOD_JOB, "agent.bandwidth: must be \"off\" or a rate"),
    ("[agent]\nbandwidth = \"0.5Kbps\"\n" + GOOD_JOB, "agent.bandwidth: must be between 1Kbps and 999Gbps"),
    ("[agent]\nbandwidth = \"1000Gbps\"\n" + GOOD_JOB, "agent.bandwidth: must be between"),
    ("[agent]\nmax_connections = 0\n" + GOOD_JOB, "agent.max_connections: must be a whole number from 1"),
    ("[agent]\nmax_connections = \"8\"\n" + GOOD_JOB, "agent.max_connections: must be a whole number"),
    ("[agent]\nlog_level = \"loud\"\n" + GOOD_JOB, "agent.log_level: must be one of debug, info"),
    ("[agent]\nmetrics = \"9108\"\n" + GOOD_JOB, 'agent.metrics: must be "host:port"'),
    ("", "jobs: at least one [[jobs]] table is required"),
    ("jobs = 3\n", "jobs: must be an array of tables"),
    (GOOD_JOB + GOOD_JOB, "jobs[1].name: duplicate job name 'fs'"),
    (GOOD_JOB.replace('name = "fs"\n', ""), "jobs[0].name: is required"),
    (GOOD_JOB.replace('"fs"', '"my job"'), "jobs[0].name: must be 1-64 letters"),
    (GOOD_JOB.replace('source = "src"', 'source = "missing"'), "jobs[0].source:"),
    (GOOD_JOB.replace('source = "src"\n', ""), "jobs[0].source: is required"),
    (GOOD_JOB.replace('target = { type = "local", path = "drive" }', 'location = "nowhere"'),
     "jobs[0].location: no location named 'nowhere'"),
    (GOOD_JOB.replace('target = { type = "local", path = "drive" }\n', ""),
     "jobs[0]: give either location"),
    (GOOD_JOB + 'mode = "weekly"\n', "jobs[0].mode: must be one of all, daily-only, intra-daily-only, daily-monthly"),
    (GOOD_JOB + 'mode = "daily-only"\ninclude_intra_daily = true\n', "jobs[0].include_intra_daily: applies to mode \"all\" only"),
    (GOOD_JOB + 'max_deletes = -1\n', "jobs[0].max_deletes: must be a whole number"),
    (GOOD_JOB + 'mirror_deletes = "yes"\n', "jobs[0].mirror_deletes: must be true or false"),
    (GOOD_JOB + 'family = "veeam"\n', "jobs[0].family: must be one of auto, shadowprotect, macrium"),
    (GOOD_JOB + 'folder = "../escape"\n', "jobs[0].folder: must be a relative folder name"),
    (GOOD_JOB + 'folder = "/abs"\n', "jobs[0].folder: must be a relative folder name"),
    (GOOD_JOB + 'folder = ".offsite"\n', "jobs[0].folder: must be a relative folder name"),
    (GOOD_JOB + 'sched = 1\n', "jobs[0].sched: unknown key"),
    (GOOD_JOB + 'windows = []\n', "jobs[0].windows: must be a non-empty list"),
    (GOOD_JOB + 'windows = [{ days = ["monday"] }]\n', "jobs[0].windows[0].days: must be a non-empty list of mon"),
    (GOOD_JOB + 'windows = [{ start = "25:00" }]\n', 'jobs[0].windows[0].start: must be a local time "HH:MM"'),
    (GOOD_JOB + 'windows = [{ start = "7pm" }]\n', "jobs[0].windows[0].start: must be a local time"),
    (GOOD_JOB + 'windows = [{ end = "07:60" }]\n', "jobs[0].windows[0].end: must be a local time"),
    (GOOD_JOB + 'windows = [{ from = "07:00" }]\n', "jobs[0].windows[0].from: unknown key"),
    (GOOD_JOB.replace('type = "local"', 'type = "nfs"'), "jobs[0].target.type: must be one of local, smb, sftp, ftp, ftps, s3"),
    (GOOD_JOB.replace(', path = "drive"', ""), "jobs[0].target.path: is required"),
    ('[locations.x]\ntype = "sftp"\nhost = "h"\npath = "backups"\nusername = "u"\nkey_file = "k"\n' + GOOD_JOB,
     "locations.x.path: must be an absolute path on the server"),
    ('[locations.x]\ntype = "sftp"\nhost = "h"\npath = "/b"\nusername = "u"\n' + GOOD_JOB,
     "locations.x: an sftp location needs key_file or password"),
    ('[locations.x]\ntype = "sftp"\nhost = "h"\npath = "/b"\nusername = "u"\nkey_file = "k"\nport = 70000\n' + GOOD_JOB,
     "locations.x.port: must be a whole number from 1 to 65535"),
    ('[locations.x]\ntype = "smb"\npath = "nas/share"\n' + GOOD_JOB, "locations.x.path: must be a UNC path"),
    ('[locations.x]\ntype = "s3"\nbucket = "b"\naddressing_style = "dns"\n' + GOOD_JOB,
     "locations.x.addressing_style: must be one of auto, path, virtual"),
    ('[locations.x]\ntype = "s3"\nprefix = "p"\n' + GOOD_JOB, "locations.x.bucket: is required"),
    ('[locations.x]\ntype = "ftp"\nhost = "h"\npath = "/p"\npassword_env = "OFFSITE_UNSET_VARIABLE"\n' + GOOD_JOB,
     "locations.x.password_env: environment variable OFFSITE_UNSET_VARIABLE is not set"),
    ('[locations.x]\ntype = "ftp"\nhost = "h"\npath = "/p"\npassword_file = "no-such-file"\n' + GOOD_JOB,
     "locations.x.password_file: cannot read"),
    ('[locations.x]\ntype = "ftp"\nhost = "h"\npath = "/p"\npassword = "a"\npassword_env = "B"\n' + GOOD_JOB,
     "locations.x.password: give only one of password, password_env"),
    ('[locations.x]\ntype = "ftp"\nhost = "h"\npath = "/p"\nca_file = "ca.pem"\n' + GOOD_JOB,
     "locations.x.ca_file: unknown key"),  # ca_file is for ftps only
    ('[locations.x]\nhost = "h"\n' + GOOD_JOB, "locations.x.type: is required"),
    (GOOD_JOB + '[[jobs]]\nname = "fs2"\nsource = "src"\ntarget = { type = "local", path = "drive" }\nfolder = "fs"\n',
     "folder fs is the same as the target folder of job 'fs'; jobs never share or nest target folders"),
    # SPEC section 8: jobs never share or nest target folders, however the path is written.
    (GOOD_JOB + '[[jobs]]\nname = "fs2"\nsource = "src"\ntarget = { type = "local", path = "drive" }\n'
                'folder = "fs/branch"\n', "folder fs/branch lies inside the target folder of job 'fs'"),
    (GOOD_JOB + '[[jobs]]\nname = "fs2"\nsource = "src"\ntarget = { type = "local", path = "drive/fs/x/.." }\n'
                'folder = "y"\n', "lies inside the target folder of job 'fs'"),
    ('[[jobs]]\nname = "a"\nsource = "src"\ntarget = { type = "local", path = "drive/site/inner" }\nfolder = "x"\n'
     '[[jobs]]\nname = "b"\nsource = "src"\ntarget = { type = "local", path = "drive" }\nfolder = "site"\n',
     "folder site holds the target folder of job 'a'"),
    ('[locations.s]\ntype = "smb"\npath = "\\\\\\\\Srv\\\\Backups"\n[locations.t]\ntype = "smb"\npath = "//srv/BACKUPS/Site"\n'
     '[[jobs]]\nname = "a"\nsource = "src"\nlocation = "s"\nfolder = "site"\n'
     '[[jobs]]\nname = "b"\nsource = "src"\nlocation = "t"\nfolder = "x"\n',
     "lies inside the target folder of job 'a'"),  # SMB compares names without case
    ('[locations.s]\ntype = "s3"\nbucket = "b"\nprefix = "p"\n[[jobs]]\nname = "a"\nsource = "src"\nlocation = "s"\n'
     'folder = "site"\n[[jobs]]\nname = "b"\nsource = "src"\ntarget = { type = "s3", bucket = "b", prefix = "p/site" }'
     '\nfolder = "x"\n', "lies inside the target folder of job 'a'"),
    ('[locations.s]\ntype = "ftp"\nhost = "h"\npath = "/srv"\n[locations.t]\ntype = "ftps"\nhost = "H"\npath = "/srv/"\n'
     '[[jobs]]\nname = "a"\nsource = "src"\nlocation = "s"\nfolder = "site"\n'
     '[[jobs]]\nname = "b"\nsource = "src"\nlocation = "t"\nfolder = "site"\n',
     "is the same as the target folder of job 'a'"),  # FTP and FTPS on one server: one place
    ('[[jobs]]\nname = "a"\nsource = "src"\ntarget = { type = "s3", bucket = "b", region = "eu-west-1" }\n'
     '[[jobs]]\nname = "b"\nsource = "src"\ntarget = { type = "s3", bucket = "b" }\nfolder = "a"\n',
     "is the same as the target folder of job 'a'"),  # AWS bucket names are global, whatever the region
    ('[[jobs]]\nname = "a"\nsource = "src"\ntarget = { type = "s3", bucket = "b", endpoint = "http://localhost:9000" }\n'
     '[[jobs]]\nname = "b"\nsource = "src"\ntarget = { type = "s3", bucket = "b", endpoint = "http://127.0.0.1:9000/" }\n'
     'folder = "a"\n', "is the same as the target folder of job 'a'"),
    ('[[jobs]]\nname = "a"\nsource = "src"\ntarget = { type = "local", path = "src" }\nfolder = "offsite"\n',
     "jobs.a.folder: its target folder lies inside the source of job 'a': it would be copied into itself"),
    ('[[jobs]]\nname = "a"\nsource = "drive/a/pc"\ntarget = { type = "local", path = "drive" }\n',
     "jobs.a.source: "),
    ("[agent]\nstate_dir = 5\n" + GOOD_JOB, "agent.state_dir: must be a non-empty string"),
    ("[agent]\ntransfers = 0\n" + GOOD_JOB, "agent.transfers: must be a whole number from 1 to 64"),
    (GOOD_JOB.replace('target = { type = "local", path = "drive" }', 'target = "drive"'),
     "jobs[0].target: must be a table"),
    (GOOD_JOB + 'replicate_base = "no"\n', "jobs[0].replicate_base: must be true or false"),
    (GOOD_JOB + 'keep_deleted = "forever"\n', "jobs[0].keep_deleted: must be a duration"),
    (GOOD_JOB + 'bandwidth = "fast"\n', 'jobs[0].bandwidth: must be "off" or a rate'),
    (GOOD_JOB + 'transfers = 65\n', "jobs[0].transfers: must be a whole number from 1 to 64"),
    ("[agent]\nstreams = 0\n" + GOOD_JOB, "agent.streams: must be a whole number from 1 to 16"),
    (GOOD_JOB + 'streams = "4"\n', "jobs[0].streams: must be a whole number from 1 to 16"),
    (GOOD_JOB + 'max_lag = "soon"\n', "jobs[0].max_lag: must be a duration"),
    (GOOD_JOB + 'max_rpo = "weekly"\n', "jobs[0].max_rpo: must be a duration"),
    (GOOD_JOB + 'max_pending_files = -1\n', 'jobs[0].max_pending_files: must be "off" or a whole number of files'),
    (GOOD_JOB + 'max_pending_bytes = "lots"\n', 'jobs[0].max_pending_bytes: must be "off" or a size'),
    (GOOD_JOB + 'inactive_after = "0s"\n', "jobs[0].inactive_after: must be at least 1s"),
    (GOOD_JOB + 'verify_every = "30s"\n', "jobs[0].verify_every: must be at least 60s"),
    (GOOD_JOB + 'min_free = "1 bucket"\n', 'jobs[0].min_free: must be "off" or a size'),
    (GOOD_JOB + '[notify]\nurls = []\n', "notify.urls: must be a non-empty list of Apprise URLs"),
    (GOOD_JOB + '[notify]\nheartbeat_url = 5\n', "notify.heartbeat_url: must be a non-empty string"),
    (GOOD_JOB + '[notify]\nheartbeat_every = "1s"\n', "notify.heartbeat_every: must be at least 10s"),
    (GOOD_JOB + '[notify]\nrepeat = "1s"\n', "notify.repeat: must be at least 60s"),
    (GOOD_JOB + '[notify]\nsummary = "weekly"\n', "notify.summary: must be one of off, daily"),
    (GOOD_JOB + '[notify]\nsummary_at = "8am"\n', 'notify.summary_at: must be a local time "HH:MM"'),
]

# A valid [locations.x] of each type, and one malformed key of it at a time: (type, key, value, message).
LOCATION_BASE = {"local": {"path": '"drive"'}, "smb": {"path": '"//nas/share"'},
                 "sftp": {"host": '"h"', "path": '"/b"', "username": '"u"', "key_file": '"k"'},
                 "ftp": {"host": '"h"', "path": '"/p"'}, "ftps": {"host": '"h"', "path": '"/p"'},
                 "s3": {"bucket": '"b"'}}
NON_EMPTY = "must be a non-empty string"
LOCATION_BAD = [
    ("local", "path", "5", NON_EMPTY),
    ("smb", "username", "5", NON_EMPTY),
    ("smb", "domain", "5", NON_EMPTY),
    ("smb", "password", "5", NON_EMPTY),
    ("smb", "port", "0", "must be a whole number from 1 to 65535"),
    ("sftp", "host", '"a b"', "must be a host name or address"),
    ("sftp", "username", '""', NON_EMPTY),
    ("sftp", "key_file", "5", NON_EMPTY),
    ("sftp", "key_passphrase", "5", NON_EMPTY),
    ("sftp", "password", "5", NON_EMPTY),
    ("sftp", "known_hosts", "5", NON_EMPTY),
    ("sftp", "host_key", "5", NON_EMPTY),
    ("sftp", "host_key", '"AAAAC3NzaC1lZDI1NTE5"', "must look like 'ssh-ed25519 AAAA...'"),
    ("sftp", "accept_new_host_key", '"yes"', "must be true or false"),
    ("sftp", "compress", '"yes"', "must be true or false"),
    *((kind, key, value, message) for kind in ("ftp", "ftps") for key, value, message in (
        ("host", '"a b"', "must be a host name or address"),
        ("port", "0", "must be a whole number from 1 to 65535"),
        ("path", '"p"', "must be an absolute path on the server"),
        ("username", "5", NON_EMPTY),
        ("password", "5", NON_EMPTY),
        ("passive", '"yes"', "must be true or false"))),
    ("ftps", "ca_file", "5", NON_EMPTY),
    ("s3", "bucket", '""', NON_EMPTY),
    ("s3", "prefix", "5", NON_EMPTY),
    ("s3", "region", "5", NON_EMPTY),
    ("s3", "endpoint", "5", NON_EMPTY),
    ("s3", "endpoint", '"minio.local:9000"', "must be an http:// or https:// URL"),
    ("s3", "access_key_id", "5", NON_EMPTY),
    ("s3", "secret_access_key", "5", NON_EMPTY),
    ("s3", "storage_class", "5", NON_EMPTY),
    ("s3", "object_lock_days", "0", "must be a whole number from 1 to 36500"),
    ("s3", "sse", '"aes"', "must be one of AES256, aws:kms"),
    ("s3", "sse_kms_key_id", '"k"', 'applies to sse = "aws:kms" only'),
]
BAD += [(f'[locations.x]\ntype = "{kind}"\n'
         + "".join(f"{k} = {v}\n" for k, v in {**LOCATION_BASE[kind], key: value}.items()) + GOOD_JOB,
         f"locations.x.{key}: {message}") for kind, key, value, message in LOCATION_BAD]


@pytest.mark.parametrize("text,expected", BAD, ids=[b[1][:50] for b in BAD])
def test_malformed_config_is_one_line_exit_2(folder, capsys, text, expected):
    path = write(folder, text)
    rc = main(["-c", str(path), "check"])
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"offsite: {path}: "), lines[0]
    assert expected in lines[0]
    assert "Traceback" not in err


def documented_keys() -> set[tuple[str, str]]:
    """Every key the README's configuration tables document, as (table, key): ("agent",
    "settle"), ("jobs", "mode"), ("notify", "repeat"), and per location type ("sftp", "port")."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    start = lines.index("## Configuration: `agent.toml`") + 1
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("#"))
    keys: set[tuple[str, str]] = set()
    caption = ""  # the line above a table: `[agent]`, `type = "ftp" or "ftps"`, `[[jobs]]` ...
    for line in lines[start:end]:
        if not line.startswith("|"):
            caption = line.strip() or caption
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] in ("key", "---"):
            continue
        names = re.findall(r"`([a-z_]+)`", cells[0])  # `location` / `target`: two keys
        if caption.startswith("`type = "):
            types = re.findall(r'"([a-z0-9]+)"', caption)
            only = re.match(r"((?:`[a-z0-9]+`(?:, )?)+) only:", cells[2])  # "`ftps` only: ..."
            if only:
                types = re.findall(r"`([a-z0-9]+)`", only.group(1))
            keys |= {(t, k) for t in types for k in names}
        else:
            table = re.match(r"`\[*(\w+)\]*`", caption)
            assert table, f"a configuration table under an unknown caption: {caption!r}"
            keys |= {(table.group(1), k) for k in names}
    return keys


def named_key(text: str, expected: str) -> tuple[str, str] | None:
    """The (table, key) a malformed case's message names, as documented_keys() names it; None
    for a message about the file or about several jobs at once."""
    m = re.match(r"(agent|notify)\.(\w+)", expected)
    if m:
        return m.group(1), m.group(2)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None
    m = re.match(r"locations\.([\w-]+)\.(\w+)", expected)
    if m:
        kind = doc.get("locations", {}).get(m.group(1), {}).get("type")
        return (kind, m.group(2)) if kind else None
    m = re.match(r"jobs\[(\d+)\]\.target\.(\w+)", expected)
    if m:
        kind = doc["jobs"][int(m.group(1))]["target"].get("type")
        return (kind, m.group(2)) if kind else None
    m = re.match(r"jobs(?:\[\d+\]|\.[\w-]+)\.(\w+)", expected)
    return ("jobs", m.group(1)) if m else None


def test_every_key_the_readme_documents_has_a_malformed_case():
    """Each documented key has at least one case in BAD whose one line names it: a key added
    to the README (or to the declarations it is rendered from) without a malformed case fails."""
    documented = documented_keys()
    declared = ({("agent", k) for k in config.AGENT_OPTIONS} | {("jobs", k) for k in config.JOB_OPTIONS}
                | {("notify", k) for k in config.NOTIFY_OPTIONS}
                | {(t, k) for t, opts in config.TARGET_OPTIONS.items() for k in opts})
    assert declared <= documented, f"the README's tables were not read whole: {sorted(declared - documented)}"
    named = {named_key(text, expected) for text, expected in BAD}
    missing = sorted(documented - named)
    assert not missing, f"documented keys with no malformed case in BAD: {missing}"


@pytest.mark.parametrize("form", ["inline", "env", "file"])
def test_a_heartbeat_url_that_is_not_http_is_refused_in_every_form(folder, capsys, monkeypatch, form):
    url = "ftp://user:hunter2-secret@example.net/ping"
    if form == "inline":
        line = f'heartbeat_url = "{url}"'
    elif form == "env":
        monkeypatch.setenv("OFFSITE_TEST_HEARTBEAT", url)
        line = 'heartbeat_url_env = "OFFSITE_TEST_HEARTBEAT"'
    else:
        (folder / "hb.txt").write_text(url + "\n")
        line = 'heartbeat_url_file = "hb.txt"'
    path = write(folder, GOOD_JOB + f"[notify]\n{line}\n")
    assert main(["-c", str(path), "check"]) == 2
    err = capsys.readouterr().err
    assert "notify.heartbeat_url: must be an http:// or https:// URL" in err and "hunter2-secret" not in err


def test_inline_secret_needs_an_owner_only_file(folder, capsys):
    path = write(folder, '[locations.x]\ntype = "ftp"\nhost = "h"\npath = "/p"\npassword = "hunter2-secret"\n'
                 + GOOD_JOB, mode=0o644)
    rc = main(["-c", str(path), "check"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "locations.x.password: a secret may be written in the config file only when" in err
    assert "0644" in err and "hunter2-secret" not in err


def test_malformed_config_through_the_real_command(folder):
    path = write(folder, GOOD_JOB + 'mode = "sometimes"\n')
    for command in (["run"], ["status"], ["check"], ["queue", "list"]):
        r = run_offsite(path, *command)
        assert r.returncode == 2, (command, r.stderr)
        assert r.stderr.count("\n") == 1 and "jobs[0].mode: must be one of" in r.stderr
        assert "Traceback" not in r.stderr


def test_missing_config_file(tmp_path):
    r = run_offsite(tmp_path / "nope.toml", "check")
    assert r.returncode == 2 and "nope.toml: config file not found" in r.stderr


def test_config_found_through_environment(folder):
    path = write(folder, '[agent]\nstate_dir = "st"\n' + GOOD_JOB)
    r = run_offsite(path, "check")
    assert r.returncode == 0, r.stderr
    r2 = subprocess.run([sys.executable, "-m", "offsite", "check"], capture_output=True, text=True,
                        cwd="/", env={**os.environ, "OFFSITE_CONFIG": str(path)})
    assert r2.returncode == 0 and "fs: ok" in r2.stdout
    env = {k: v for k, v in os.environ.items() if k != "OFFSITE_CONFIG"}
    r3 = subprocess.run([sys.executable, "-m", "offsite", "check"], capture_output=True, text=True,
                        cwd=folder, env=env)  # no -c, no $OFFSITE_CONFIG: ./agent.toml
    assert r3.returncode == 0 and "fs: ok" in r3.stdout


def test_bad_command_line_is_exit_2(folder):
    r = run_offsite(write(folder, GOOD_JOB), "frobnicate")
    assert r.returncode == 2
    r = run_offsite(write(folder, GOOD_JOB), "sync", "no-such-job")
    assert r.returncode == 2 and "no job named 'no-such-job'" in r.stderr


def test_status_and_queue_work_while_a_source_is_unplugged(folder):
    path = write(folder, '[agent]\nstate_dir = "st"\n' + GOOD_JOB)
    (folder / "src").rmdir()
    assert run_offsite(path, "status").returncode == 0
    assert run_offsite(path, "queue", "list").returncode == 0
    r = run_offsite(path, "check")
    assert r.returncode == 2 and "jobs[0].source:" in r.stderr


def test_transfers_default_agent_wide_and_per_job(folder):
    from offsite.errors import ConfigError

    c = config.load(write(folder, GOOD_JOB))
    assert c.agent.transfers == 4 and c.jobs[0].transfers is None  # the job takes the agent's
    c = config.load(write(folder, "[agent]\ntransfers = 2\n" + GOOD_JOB + "transfers = 8\n"))
    assert c.agent.transfers == 2 and c.jobs[0].transfers == 8
    with pytest.raises(ConfigError, match=r"jobs\[0\]\.transfers: must be a whole number from 1 to 64"):
        config.load(write(folder, GOOD_JOB + "transfers = 0\n"))
