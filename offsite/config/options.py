"""The options of agent.toml, each declared once: its parser, its default, and its README row.

This is the one place each option's default is written, as a user would write it ("30s",
"off", 8, true); `Opt.value` is that default as the program uses it (30.0, None, 8, True),
and the rest of offsite (model.py, alerts.py) reads defaults from here. The parser (load.py)
validates against these declarations, resolves secrets and paths, and refuses unknown keys.
`help` and `shown` are README text: doc.py renders the README's configuration tables from
them, and tests/test_config_doc.py fails when the README and these declarations differ.
Keys the parser reads itself (a job's `location`, `target` and `windows`, notify's `urls`)
are declared below as README-only rows (`Row`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..units import parse_bandwidth, parse_size
from .parsers import (
    absolute_posix,
    boolean,
    choice,
    clock_text,
    count,
    duration,
    host,
    host_key,
    hostport,
    http_url,
    integer,
    job_name,
    off_or,
    port,
    relative_folder,
    string,
    string_or_empty,
    unc,
)

REQUIRED = object()
TARGET_TYPES = ("local", "smb", "sftp", "ftp", "ftps", "s3")
MODES = ("all", "daily-only", "intra-daily-only", "daily-monthly")
FAMILIES = ("auto", "shadowprotect", "macrium")
LOG_LEVELS = ("debug", "info", "warning", "error")
STATE_DIR = "/var/lib/offsite"  # [agent] state_dir where no ProgramData (load.default_state_dir)


def _codes(values: tuple[str, ...]) -> str:
    return ", ".join(f"`{v}`" for v in values)


@dataclass(frozen=True)
class Opt:
    """One option: its parser, default, whether it is a secret or a path, and its README row."""

    parse: Callable[[Any], Any]
    default: Any = None  # as written in agent.toml; REQUIRED; None: absent
    secret: bool = False  # also comes as <name>_env and <name>_file; never printed
    path: bool = False  # a local file path, resolved against the config file's folder
    help: str = ""  # the README's meaning (markdown)
    shown: str = ""  # the README's default where `default` cannot say it ("the job's name")
    for_type: Mapping[str, Any] = field(default_factory=dict)  # a job's default per target type

    @property
    def value(self) -> Any:
        """The default as the program uses it: "30s" -> 30.0, "off" -> None."""
        return None if self.default is None or self.default is REQUIRED else self.parse(self.default)

    def value_for(self, target_type: str) -> Any:
        written = self.for_type.get(target_type, self.default)
        return None if written is None else self.parse(written)


@dataclass(frozen=True)
class Row:
    """A README row for keys the parser reads itself, not through an Opt."""

    keys: tuple[str, ...]
    shown: str
    help: str
    after: str | None = None  # the option whose row it follows; None: the first row


AGENT_OPTIONS: dict[str, Opt] = {
    "state_dir": Opt(string, None, path=True, shown=f"`{STATE_DIR}`",
                     help="queue, owner IDs, results, logs; created readable by its owner only"),
    "log_level": Opt(choice(*LOG_LEVELS), "info", help=_codes(LOG_LEVELS)),
    "settle": Opt(duration(0), "30s",
                  help="quiet period before a file without other completion signal counts as complete"),
    "rescan": Opt(duration(1), "1h",
                  help="full reconciliation interval (also at start); a job in error retries at this interval"),
    "max_connections": Opt(integer(1, 256), 8, help="target sessions open at once, all jobs together"),
    "transfers": Opt(integer(1, 64), 4,
                     help="files in flight per job, each on its own target session (within "
                          "`max_connections`); a job may set its own"),
    "streams": Opt(integer(1, 16), 1,
                   help="sessions one big file (64 MiB or more) is written over at once on SFTP, SMB "
                        "and FTP (where the server allows), within `max_connections`; a job may set its own "
                        "(see \"Several streams for one big file\")"),
    "bandwidth": Opt(parse_bandwidth, "off",
                     help="cap shared by all jobs without their own: `100Mbps`, `12MB/s`, `512KiB/s` ..."),
    "retry_for": Opt(duration(0), "10m",
                     help="how long transient failures are retried before the item is parked until the "
                          "next rescan"),
    "metrics": Opt(hostport, None, shown="absent",
                   help="`host:port` where Prometheus metrics (`/metrics`) and the status page (`/`) are "
                        "served (see \"Telling the operator\")"),
}

# Options of each target type (`[locations.NAME]` or a job's inline `target`).
_HOST = "the server's name or address"
_PASSWORD = "the account's password"
TARGET_OPTIONS: dict[str, dict[str, Opt]] = {
    "local": {
        "path": Opt(string, REQUIRED, path=True,
                    help="a folder on a local, external or mounted network drive; it must exist: offsite "
                         "never creates a missing drive's mount point"),
    },
    "smb": {
        "path": Opt(unc, REQUIRED, help="`\\\\server\\share\\folder` or `//server/share/folder`"),
        "username": Opt(string, help="the account to log on as; `DOMAIN\\user` and `user@domain` fill `domain`"),
        "domain": Opt(string, help="the account's domain"),
        "password": Opt(string, secret=True, help=_PASSWORD),
        "port": Opt(port, 445, help="the server's SMB port"),
    },
    "sftp": {
        "host": Opt(host, REQUIRED, help=_HOST),
        "port": Opt(port, 22, help="the server's SSH port"),
        "path": Opt(absolute_posix, REQUIRED, help="the folder on the server: absolute, never relative to the home folder"),
        "username": Opt(string, REQUIRED, help="the account to log on as"),
        "key_file": Opt(string, path=True, help="a private key to log on with; `key_file` or `password` is required"),
        "key_passphrase": Opt(string, secret=True, help="the passphrase of `key_file`, if it has one"),
        "password": Opt(string, secret=True, help=_PASSWORD),
        "known_hosts": Opt(string, path=True,
                           help="an OpenSSH `known_hosts` file with the server's key; `known_hosts` or "
                                "`host_key`, not both"),
        "host_key": Opt(host_key, help="the server's key, as in `known_hosts`: `ssh-ed25519 AAAA...`"),
        "accept_new_host_key": Opt(boolean, False,
                                   help="host keys are verified; a server whose key is unknown is refused "
                                        "unless this is `true` (its key is then added to `known_hosts`, when "
                                        "given)"),
        "compress": Opt(boolean, False, help="`true`: SSH compression"),
    },
    "ftp": {
        "host": Opt(host, REQUIRED, help=_HOST),
        "port": Opt(port, 21, help="the server's FTP port"),
        "path": Opt(absolute_posix, REQUIRED, help="the folder on the server: absolute"),
        "username": Opt(string, "anonymous", help="the account to log on as"),
        "password": Opt(string, secret=True, help=_PASSWORD),
        "passive": Opt(boolean, True, help="`false`: active mode"),
    },
    "s3": {
        "bucket": Opt(string, REQUIRED, help="the bucket"),
        "prefix": Opt(string_or_empty, "", shown="none", help="the key prefix the jobs' folders go under"),
        "region": Opt(string, help="the bucket's region"),
        "endpoint": Opt(http_url, help="the URL of an S3-compatible store (absent: AWS)"),
        "addressing_style": Opt(choice("auto", "path", "virtual"), "auto", help=_codes(("auto", "path", "virtual"))),
        "access_key_id": Opt(string,
                             help="with `secret_access_key`, the store's access key; both absent: boto3's "
                                  "standard credential chain, so environment variables, `~/.aws` and instance "
                                  "roles work"),
        "secret_access_key": Opt(string, secret=True, help="the secret of `access_key_id`"),
        "storage_class": Opt(string, help="the storage class objects are written with (absent: the store's default)"),
        "object_lock_days": Opt(integer(1, 36500),
                                help="each object is locked (compliance mode) this many days after its upload"),
        "sse": Opt(choice("AES256", "aws:kms"), None,
                   help="`AES256` or `aws:kms`: server-side encryption asked for on every object and multipart "
                        "upload; `check` fails when the store does not report it"),
        "sse_kms_key_id": Opt(string, None, help="with `aws:kms`: the KMS key (absent: the store's)"),
    },
}
TARGET_OPTIONS["ftps"] = {
    **TARGET_OPTIONS["ftp"],
    "ca_file": Opt(string, path=True,
                   help="the server certificate is verified; this file holds a private CA's certificates"),
}

JOB_OPTIONS: dict[str, Opt] = {
    "name": Opt(job_name, REQUIRED, help="unique; used on the command line"),
    "source": Opt(string, REQUIRED, path=True, help="the managed folder"),
    "folder": Opt(relative_folder, None, shown="the job's name",
                  help="folder under the location's path, created if missing"),
    "mode": Opt(choice(*MODES), "all", for_type={"s3": "daily-monthly"}, help=_codes(MODES)),
    "include_intra_daily": Opt(boolean, False,
                               help="mode `all` only: also send the original 15-minute incrementals"),
    "replicate_base": Opt(boolean, True,
                          help="`false`: never send `.spf` base images (seeded by hand); their sidecars still go"),
    "mirror_deletes": Opt(boolean, True,
                          help="mode `all` (and Macrium sets): deletions at the source are mirrored"),
    "max_deletes": Opt(integer(0, 10_000_000), 100,
                       help="more image deletions than this mirrored within 24 hours wait for "
                            "`--allow-deletes` (sidecars not counted)"),
    "keep_deleted": Opt(off_or(duration(0)), "30d",
                        help="how long files deleted or replaced offsite stay in the bin "
                             "(`.offsite/deleted/<day>/`) before they are purged; `off` deletes at once"),
    "family": Opt(choice(*FAMILIES), "auto", help=_codes(FAMILIES)),
    "bandwidth": Opt(parse_bandwidth, None, shown="the global cap", help="this job's own cap"),
    "transfers": Opt(integer(1, 64), None, shown="`[agent] transfers`", help="files in flight for this job"),
    "streams": Opt(integer(1, 16), None, shown="`[agent] streams`", help="sessions one big file is written over"),
    # Alert thresholds (SPEC section 6); "off" disables one.
    "max_lag": Opt(off_or(duration(1)), "26h",
                   help="alert `lag` when the oldest file not yet offsite is older than this (`off` disables)"),
    "max_rpo": Opt(off_or(duration(1)), "off",
                   help="alert `restorable` when a volume's newest point restorable from the offsite copy alone "
                        "is older than this (`off` disables)"),
    "max_pending_files": Opt(off_or(count), "off", help="alert `queue` past this many files"),
    "max_pending_bytes": Opt(off_or(parse_size), "off",
                             help="alert `queue` past this many bytes (`\"500GB\"`, `\"2TiB\"`)"),
    "inactive_after": Opt(off_or(duration(1)), "off",
                          help="alert `source-inactive` when no new backup file appeared at the source for "
                               "this long"),
    "verify_every": Opt(off_or(duration(60)), "off",
                        help="read back a random 10% of the offsite copy this often, inside the job's windows, "
                             "as `offsite verify --sample 10` does; a mismatch raises `verify-failed`"),
    "min_free": Opt(off_or(parse_size), "off",
                    help="alert `target-space` below this much free space on the target (local and SMB always; "
                         "SFTP where the server has the statvfs extension, as OpenSSH does; otherwise unknown, "
                         "no alert)"),
}
JOB_ROWS = (
    Row(("location", "target"), "required (one of them)", "a `[locations]` name, or an inline table",
        after="source"),
    Row(("windows",), "always open",
        'list of `{ days = [...], start = "HH:MM", end = "HH:MM" }`, local wall-clock time; a window whose '
        "end is not after its start runs past midnight and belongs to the day it starts; `days` defaults to "
        "every day, `start` to 00:00, `end` to the end of the day", after="transfers"),
)

NOTIFY_OPTIONS: dict[str, Opt] = {
    "heartbeat_url": Opt(http_url, secret=True,
                         help="a dead man's switch (Healthchecks, Uptime Kuma push): GET after each successful "
                              "sync and at least every `heartbeat_every` while no job is in error; POST "
                              "`<url>/fail` with the reason when one enters error. Also `heartbeat_url_env` / "
                              "`_file`"),
    "heartbeat_every": Opt(duration(10), "1h", help="the longest time between two heartbeats while no job is in error"),
    "repeat": Opt(off_or(duration(60)), "24h", help="an alert still active is sent again after this (`off`: never)"),
    "summary": Opt(choice("off", "daily"), "off", help="`daily`: one summary message a day at `summary_at`"),
    "summary_at": Opt(clock_text, "08:00", help="the local time of the daily summary"),
}
NOTIFY_ROWS = (
    # Read by load._Parser.notify_urls: a list, and URLs carry secrets.
    Row(("urls",), "none",
        "Apprise URLs: `mailto://user:pass@smtp.example.net:587?to=ops@example.net`, `json://`, `slack://`, "
        "`msteams://`, `ntfy://`, `pagerduty://` ... They carry secrets, so also `urls_env` (URLs separated "
        "by spaces or new lines) and `urls_file` (one a line, `#` comments); inline `urls` need an "
        "owner-only `agent.toml`"),
)
