"""Command-line manners of saliencyd and saliencyctl (issue 11, item 4): --version, the install
script's completions and man pages, `top --watch` on a real terminal (pty), `replay` without a
subscriber, and progress lines that only a terminal sees."""
from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, ctl_bin, daemon_bin, free_port, wait_for

ESC = "\x1b"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
LAYERS = [("conv1", 6), ("conv2", 10)]


def run(*args, timeout=60, **kw):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, **kw)


def write_feed(dir: Path, rows: int = 300, seed: int = 1):
    dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    x = np.exp(0.5 * rng.standard_normal((rows, 16))).astype(np.float32)
    np.save(dir / "rows.npy", x)
    (dir / "schema.json").write_text(json.dumps({"model": "manners", "layers": [{"name": n, "filters": f} for n, f in LAYERS]}))
    return dir / "rows.npy", dir / "schema.json"


# ---------------------------------------------------------------------------------------------
# --version

def test_both_executables_print_the_same_version(saliencyd):
    a, b = run(daemon_bin(), "--version"), run(ctl_bin(), "--version")
    assert a.returncode == 0 and b.returncode == 0, (a.stderr, b.stderr)
    m1 = re.fullmatch(r"saliencyd (\d+\.\d+\.\d+)\n", a.stdout)
    m2 = re.fullmatch(r"saliencyctl (\d+\.\d+\.\d+)\n", b.stdout)
    assert m1 and m2, (a.stdout, b.stdout)
    assert m1.group(1) == m2.group(1) == "0.2.0"
    d = saliencyd()
    assert d.status()["version"] == m1.group(1)          # the status reply uses the same constant


# ---------------------------------------------------------------------------------------------
# install.sh: binaries, completions, man pages

@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    stage = tmp_path_factory.mktemp("stage")
    r = run("bash", ROOT / "systemd/install.sh", "--destdir", stage, "--prefix", "/usr/local",
            "--bin-dir", daemon_bin().parent, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    return stage, r.stdout


def test_install_script_stages_binaries_unit_and_config(staged):
    stage, out = staged
    for b in ("saliencyd", "saliencyctl"):
        p = stage / "usr/local/bin" / b
        assert p.exists() and os.access(p, os.X_OK)
    assert (stage / "etc/systemd/system/saliencyd.service").read_text().count("ExecStart=/usr/local/bin/saliencyd") == 1
    assert (stage / "etc/saliencyd/saliencyd.toml").read_text() == (ROOT / "systemd/saliencyd.toml").read_text()
    assert "saliencyctl 0.2.0" in out and "saliencyd 0.2.0" in out


def test_man_pages_are_valid_roff_for_every_command(staged):
    stage, _ = staged
    man1 = stage / "usr/local/share/man/man1"
    pages = sorted(p.name for p in man1.glob("*.1"))
    help_text = run(ctl_bin(), "--help").stdout
    subcommands = re.findall(r"^  (\S+)", help_text.split("SUBCOMMANDS:")[1].split("\n\n")[0], re.M)
    assert {"top", "replay", "keygen", "state"} <= set(subcommands), help_text
    expected = {"saliencyd.1", "saliencyctl.1", "saliencyctl-state-inspect.1"} | {f"saliencyctl-{s}.1" for s in subcommands if s != "help"}
    assert expected <= set(pages), f"missing: {expected - set(pages)}"
    groff = shutil.which("groff")
    assert groff, "groff is needed to check the man pages (apt-get install groff-base)"
    for name in pages:
        r = run(groff, "-man", "-Tutf8", "-ww", "-z", man1 / name)
        assert r.returncode == 0 and r.stderr == "", f"{name}: {r.stderr}"
        text = (man1 / name).read_text()
        assert text.startswith(".TH ") and "\n.SH NAME\n" in text and "\n.SH SYNOPSIS\n" in text, name
        assert all(ord(c) < 128 for c in text), f"{name} is not plain ASCII roff"
    rendered = run("man", "-l", man1 / "saliencyctl-top.1", env={**os.environ, "MANWIDTH": "100", "MAN_KEEP_FORMATTING": "0"})
    assert rendered.returncode == 0, rendered.stderr
    plain = re.sub(r".\x08", "", rendered.stdout)
    for needle in ("saliencyctl-top", "SYNOPSIS", "--watch", "--interval", "--model", "(default: 20)"):
        assert needle in plain, f"{needle!r} not in the rendered page:\n{plain[:1500]}"
    daemon_page = re.sub(r".\x08", "", run("man", "-l", man1 / "saliencyd.1").stdout)
    assert "--check-config" in daemon_page and "--version" in daemon_page


def test_bash_completion_parses_and_completes_subcommands(staged):
    stage, _ = staged
    comp = stage / "usr/local/share/bash-completion/completions"
    assert (stage / "usr/local/share/zsh/site-functions/_saliencyctl").read_text().startswith("#compdef saliencyctl")
    assert "complete -c 'saliencyctl'" in (stage / "usr/local/share/fish/vendor_completions.d/saliencyctl.fish").read_text()
    for b in ("saliencyd", "saliencyctl"):
        r = run("bash", "-n", comp / b)
        assert r.returncode == 0, r.stderr
    script = f"""
source {comp / 'saliencyctl'}
complete -p saliencyctl
fn=$(complete -p saliencyctl | sed -E 's/.*-F ([^ ]+).*/\\1/')
ask() {{ COMPREPLY=(); COMP_LINE="$1"; COMP_POINT=${{#COMP_LINE}}; read -ra COMP_WORDS <<< "$1"; [[ "$1" == *" " ]] && COMP_WORDS+=("");
        COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 )); "$fn" saliencyctl "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}";
        echo "[$1] ${{COMPREPLY[*]}}"; }}
ask "saliencyctl "
ask "saliencyctl to"
ask "saliencyctl top --wa"
ask "saliencyctl top --by "
"""
    r = run("bash", "-c", script, env={**os.environ, "PATH": f"{stage / 'usr/local/bin'}:{os.environ['PATH']}"})
    assert r.returncode == 0, r.stderr
    lines = {l.split("] ", 1)[0] + "]": l.split("] ", 1)[1] if "] " in l else "" for l in r.stdout.splitlines() if l.startswith("[")}
    assert "complete -o filenames -F _saliencyctl saliencyctl" in r.stdout
    assert {"status", "top", "replay", "keygen", "alerts"} <= set(lines["[saliencyctl ]"].split()), r.stdout
    assert lines["[saliencyctl to]"].split() == ["top"], r.stdout
    assert lines["[saliencyctl top --wa]"].split() == ["--watch"], r.stdout
    assert set(lines["[saliencyctl top --by ]"].split()) == {"pot", "zscore", "logres-pot", "logres-zscore", "ratio-pot", "ratio-zscore",
                                                            "pooled-zscore"}, r.stdout


# ---------------------------------------------------------------------------------------------
# top --watch on a pty

def spawn_on_pty(argv, rows=12, cols=70):
    """Runs argv with a new pty as its controlling terminal (stdin, stdout, stderr) of rows×cols."""
    pid, fd = pty.fork()
    if pid == 0:  # child
        try:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    return pid, fd


def read_for(fd, seconds, until=None):
    out = b""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        r, _, _ = select.select([fd], [], [], 0.05)
        if r:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
            if until and until(out):
                break
    return out


def wait_child(pid, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        p, status = os.waitpid(pid, os.WNOHANG)
        if p:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"saliencyctl did not exit within {timeout} s")


@pytest.fixture
def fed_daemon(saliencyd):
    d = saliencyd(calibration=100)
    p = d.producer("manners", LAYERS)
    assert p.wait_for_subscriber()
    rng = np.random.default_rng(3)
    for r in np.exp(0.5 * rng.standard_normal((150, 16))).astype(np.float32):
        p.publish(r)
    d.wait_rows("manners", 150)
    p.close()
    return d


@pytest.mark.parametrize("how", ["q", "ctrl-c", "sigterm"])
def test_top_watch_on_a_terminal(fed_daemon, how):
    rows, cols = 12, 70
    argv = [str(ctl_bin()), "top", "--model", "manners", "-k", "16", "--watch", "--interval", "0.2",
            "--query", fed_daemon.endpoints["query"]]
    pid, fd = spawn_on_pty(argv, rows, cols)
    try:
        before = termios.tcgetattr(fd)
        out = read_for(fd, 10, until=lambda b: b.count(b"\x1b[J") >= 4)   # a few refreshes
        text = out.decode("utf-8", "replace")
        assert "\x1b[?1049h" in text, f"no alternate screen: {text[:300]!r}"
        assert "\x1b[?25l" in text, "cursor not hidden"
        mode = termios.tcgetattr(fd)
        assert not mode[3] & termios.ICANON and not mode[3] & termios.ECHO, "keyboard not in non-canonical no-echo mode"
        frames = [f for f in text.split("\x1b[H")[1:] if "rank" in f and "\x1b[J" in f]   # complete frames only
        assert len(frames) >= 2, text[-500:]
        for frame in frames:
            lines = frame.replace("\r", "").split("\n")   # the pty's ONLCR turns \n into \r\n
            assert len(lines) <= rows, f"{len(lines)} lines on a {rows}-row terminal"
            assert all(len(ANSI.sub("", l)) <= cols for l in lines)
        first = ANSI.sub("", frames[-1]).replace("\r", "").split("\n")
        assert first[0].startswith("manners") and "phase monitoring" in first[0] and "rows 150" in first[0] and "firing" in first[0], first[0]
        assert len(first[0]) == cols, "the summary line (longer than 70 columns) is cut to the window"
        assert any(l.startswith("rank") for l in first[:5]), "header not at the top"
        # k = 16 rows do not fit in 12 lines: cut, header kept.
        assert len(first) == rows
        if how == "q":
            # A smaller window (the kernel sends SIGWINCH): the next frames fit the new size.
            fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 8, 50, 0, 0))
            more = read_for(fd, 5, until=lambda b: len(re.findall(rb"\x1b\[H[^\x1b]*manners", b)) >= 3 and b.count(b"\x1b[J") >= 3).decode("utf-8", "replace")
            small = [ANSI.sub("", f).replace("\r", "").split("\n") for f in more.split("\x1b[H")[1:] if "rank" in f and "\x1b[J" in f]
            assert small and len(small[-1]) == 8 and all(len(l) <= 50 for l in small[-1]), small[-1:]
            os.write(fd, b"q")
        elif how == "ctrl-c":
            os.write(fd, b"\x03")
        else:
            os.kill(pid, signal.SIGTERM)
        rest = read_for(fd, 5, until=lambda b: b"\x1b[?1049l" in b).decode("utf-8", "replace")
        code = wait_child(pid, 5)
        assert code == (143 if how == "sigterm" else 0), f"exit {code}"
        assert "\x1b[?25h" in rest and "\x1b[?1049l" in rest, f"terminal not restored: {rest[-200:]!r}"
        after = termios.tcgetattr(fd)
        assert after[3] == before[3], "local modes (ICANON, ECHO) not restored"
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)


def test_top_watch_into_a_pipe_is_plain_text(fed_daemon):
    p = subprocess.Popen([str(ctl_bin()), "top", "--model", "manners", "-k", "3", "--watch", "--interval", "0.2",
                          "--query", fed_daemon.endpoints["query"]], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(1.5)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=10)
    assert ESC.encode() not in out and ESC.encode() not in err
    assert out.decode().count("manners: top 3 by pot") >= 3


# ---------------------------------------------------------------------------------------------
# replay and analyze

def test_replay_without_a_subscriber_fails_and_says_what_to_check(tmp_path):
    rows, schema = write_feed(tmp_path / "f")
    ep = f"tcp://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    r = run(ctl_bin(), "replay", rows, "--schema", schema, "--feed", ep, "--wait-subscriber", "1")
    took = time.monotonic() - t0
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert ep in r.stderr and "within 1 s" in r.stderr and "saliencyd is running" in r.stderr and "--no-wait" in r.stderr, r.stderr
    assert "published" not in r.stdout and "anyway" not in r.stderr
    assert took < 8
    # Told not to wait: it publishes (to nobody) and succeeds.
    r = run(ctl_bin(), "replay", rows, "--schema", schema, "--feed", ep, "--no-wait")
    assert r.returncode == 0 and "published 300 predictions" in r.stdout, r.stderr


def test_progress_only_on_a_terminal(fed_daemon, tmp_path):
    rows, schema = write_feed(tmp_path / "f", rows=2000)
    ref, _ = write_feed(tmp_path / "r", rows=200, seed=2)
    # Not a terminal: no carriage returns or escape codes anywhere, JSON output intact.
    r = run(ctl_bin(), "replay", rows, "--schema", schema, "--feed", fed_daemon.endpoints["feed"], "--rate", "2000", "--json")
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and ESC not in r.stderr and ESC not in r.stdout
    assert json.loads(r.stdout)["published"] == 2000
    r = run(ctl_bin(), "analyze", "--schema", schema, "--reference", ref, "--input", rows, "--top", "1", "--json")
    assert r.returncode == 0 and "\r" not in r.stderr and ESC not in r.stderr + r.stdout
    assert len(r.stdout.splitlines()) == 2000
    # stderr on a terminal (stdout still a pipe): one updating line, cleared at the end.
    master, slave = os.openpty()
    try:
        p = subprocess.Popen([str(ctl_bin()), "replay", str(rows), "--schema", str(schema), "--feed", fed_daemon.endpoints["feed"],
                              "--rate", "1500", "--json"], stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        err = read_for(master, 20, until=lambda b: b.endswith(b"\r\x1b[K")).decode()
        out, _ = p.communicate(timeout=20)
    finally:
        os.close(master)
    assert p.returncode == 0
    assert re.search(r"replay: \d+/2000 rows \(\d+%\), [\d.]+ rows/s, ETA \d+s", err), err[-300:]
    assert err.count("\r") >= 3, "the progress line should update in place"
    assert ESC.encode() not in out and json.loads(out)["published"] == 2000
