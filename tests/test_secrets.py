"""No secret in any log, error, status or queue output, and state kept owner-only."""
from __future__ import annotations

import os
import stat
import time
import urllib.request

from conftest import AgentProcess, toml_table, wait_until
from servers import PASSWORD, free_port

WRONG = "Wrong-Smb-Pass8"
SMTP_PASSWORD, HOOK_TOKEN, PING_TOKEN = "Smtp-Pass-31x", "hook-token-9f2", "ping-token-7c4"


def test_nothing_the_agent_or_commands_produce_holds_a_secret(servers, site):
    ftp, smb, s3 = servers.get("ftp"), servers.get("smb"), servers.get("s3")
    (site.source / "C_VOL-b001.spf").write_bytes(b"x" * 5000)
    os.utime(site.source / "C_VOL-b001.spf", (time.time() - 60, time.time() - 60))
    os.environ["OFFSITE_TEST_S3_SECRET"] = s3.secret_key
    (site.root / "ftp-password").write_text(PASSWORD + "\n")
    loc = {k: v for k, v in s3.new_location().items() if k != "secret_access_key"}


    ftp_loc = {k: v for k, v in ftp.new_location().items() if k != "password"}
    extra = (toml_table("f", ftp_loc | {"password_file": str(site.root / "ftp-password")})
             + toml_table("m", smb.new_location() | {"password": WRONG})
             + toml_table("c", loc | {"secret_access_key_env": "OFFSITE_TEST_S3_SECRET"})
             + "".join(f"[[jobs]]\nname = '{n}'\nsource = '{site.source}'\nlocation = '{n}'\n" for n in "fmc"))
    # Notification destinations that refuse: every failure path logs, none may show a secret.
    dead = free_port()
    (site.root / "notify-urls").write_text(
        f"mailto://offsite:{SMTP_PASSWORD}@127.0.0.1:{dead}?to=ops@example.net&mode=insecure\n"
        f"json://127.0.0.1:{dead}/hook/{HOOK_TOKEN}\n")
    extra += (f"[notify]\nurls_file = '{site.root / 'notify-urls'}'\n"
              f"heartbeat_url = 'http://127.0.0.1:{dead}/ping/{PING_TOKEN}'\n")
    metrics = free_port()  # the status page and the metrics show the same status: no secret either
    site.config(agent=f'metrics = "127.0.0.1:{metrics}"', extra=extra)
    outputs = []
    agent = AgentProcess(site)
    try:
        wait_until(lambda: {j["name"]: j for j in site.status()["jobs"]}["m"]["state"] == "error",
                   what="the smb job's authentication error")
        wait_until(lambda: all(j["last_sync"] for j in site.status()["jobs"] if j["name"] in "fc"),
                   what="the ftp and s3 jobs' syncs")
        for args in (["status"], ["status", "--json"], ["queue", "list"], ["queue", "list", "--json"],
                     ["check"], ["check", "--json"], ["plan", "m"], ["sync", "m"], ["sync", "c", "--json"],
                     ["notify", "test"]):
            r = site.offsite(*args)
            outputs.append(r.stdout + r.stderr)
        for path in ("/", "/metrics"):
            outputs.append(urllib.request.urlopen(f"http://127.0.0.1:{metrics}{path}", timeout=10).read().decode())
    finally:
        agent.stop()
    outputs.append(agent.output())
    assert "authentication failed" in "".join(outputs)  # the failures were there to be reported
    assert f"json://127.0.0.1:{dead}/...: FAILED" in "".join(outputs)  # and the notification failures
    assert "authentication failed" in outputs[-3]  # the status page shows the smb job's error

    produced = [p for p in site.state.rglob("*") if p.is_file()]
    assert any(p.name == "offsite.log" for p in produced) and any(p.name == "data.db" for p in produced)
    texts = outputs + [p.read_bytes().decode("utf-8", "replace") for p in produced]
    for secret in (PASSWORD, WRONG, s3.secret_key, SMTP_PASSWORD, HOOK_TOKEN, PING_TOKEN):
        leaks = [t[:200] for t in texts if secret in t]
        assert not leaks, f"secret found in: {leaks}"

    # The state directory and its log are readable by their owner only.
    for p in [site.state, *site.state.rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode & 0o077 == 0, f"{p} has mode {mode:o}"
