#!/usr/bin/env python3
"""Man pages (roff, man(7) macros) for an swift-argument-parser executable, from its own
`--experimental-dump-help` JSON: one page for the command and one per subcommand
(`saliencyctl-top.1`, `saliencyctl-state-inspect.1`), so `man saliencyctl-top` works like git's.

    systemd/manpages.py BINARY OUTDIR [--version TEXT] [--date YYYY-MM-DD]

Used by systemd/install.sh. Needs only Python 3 (no network, no build of another tool).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from typing import Dict, List, Optional


def esc(text: str) -> str:
    """Text for a roff line: backslashes and hyphens escaped, no line starting with . or '."""
    out = []
    text = text.replace("\\", "\\e").replace("-", "\\-")
    # Non-ASCII (…, ≥, γ, →) as groff Unicode escapes: the page is then plain ASCII for any roff.
    text = "".join(c if ord(c) < 128 else f"\\[u{ord(c):04X}]" for c in text)
    for line in text.split("\n"):
        if line.startswith((".", "'")):
            line = "\\&" + line
        out.append(line)
    return "\n".join(out)


def paragraphs(text: str) -> str:
    """Free text (abstract, discussion): blank lines become paragraph breaks."""
    blocks = [b.strip() for b in text.strip().split("\n\n") if b.strip()]
    return "\n.PP\n".join(esc(" ".join(line.strip() for line in b.split("\n"))) for b in blocks)


def flag_names(arg: Dict) -> str:
    names = []
    for n in arg.get("names", []):
        dash = "-" if n["kind"] == "short" else "--"
        names.append(f"\\fB{esc(dash + n['name'])}\\fR")
    return ", ".join(names)


def synopsis_item(arg: Dict) -> str:
    kind = arg["kind"]
    value = f"\\fI{esc(arg.get('valueName', 'value'))}\\fR"
    if kind == "positional":
        s = f"\\fI{esc(arg.get('valueName', 'arg'))}\\fR" + ("..." if arg.get("isRepeating") else "")
    else:
        pref = arg.get("preferredName") or arg["names"][0]
        dash = "-" if pref["kind"] == "short" else "--"
        s = f"\\fB{esc(dash + pref['name'])}\\fR" + (f" {value}" if kind == "option" else "")
    return f"[{s}]" if arg.get("isOptional") else s


def visible(args: List[Dict]) -> List[Dict]:
    return [a for a in args if a.get("shouldDisplay", True)]


def page(cmd: Dict, path: List[str], root: str, version: str, date: str) -> str:
    name = "-".join(path)
    subs = [s for s in cmd.get("subcommands", []) if s.get("shouldDisplay", True) and s["commandName"] != "help"]
    args = visible(cmd.get("arguments", []))
    lines = [f'.TH "{esc(name.upper())}" "1" "{date}" "{esc(version)}" "User Commands"',
             ".SH NAME", f"{esc(name)} \\- {esc(cmd.get('abstract', '').strip() or name)}",
             ".SH SYNOPSIS", f".B {esc(' '.join(path))}"]
    items = [synopsis_item(a) for a in args]
    if subs:
        items.append("\\fIsubcommand\\fR")
    if items:
        lines.append(" ".join(items))
    lines += [".SH DESCRIPTION", paragraphs(cmd.get("abstract", "") + ("\n\n" + cmd["discussion"] if cmd.get("discussion") else ""))]
    if args:
        lines.append(".SH OPTIONS")
        for a in args:
            lines.append(".TP")
            if a["kind"] == "positional":
                lines.append(f"\\fI{esc(a.get('valueName', 'arg'))}\\fR")
            else:
                head = flag_names(a)
                if a["kind"] == "option":
                    head += f" \\fI{esc(a.get('valueName', 'value'))}\\fR"
                lines.append(head)
            text = a.get("abstract", "").strip()
            if a.get("discussion"):
                text += " " + a["discussion"].strip()
            if a.get("allValues"):
                text += f" (one of: {', '.join(a['allValues'])})"
            if "defaultValue" in a:
                text += f" (default: {a['defaultValue']})"
            lines.append(esc(text) if text else "\\&")
    if subs:
        lines.append(".SH SUBCOMMANDS")
        for s in subs:
            lines += [".TP", f"\\fB{esc(s['commandName'])}\\fR",
                      esc(s.get("abstract", "").strip()) + f" See \\fB{esc('-'.join(path + [s['commandName']]))}\\fR(1)."]
    see = [root] + (["-".join(path[:-1])] if len(path) > 2 else [])
    see = [s for s in dict.fromkeys(see) if s != name]
    if see:
        lines += [".SH SEE ALSO", ", ".join(f"\\fB{esc(s)}\\fR(1)" for s in see)]
    return "\n".join(lines) + "\n"


def generate(binary: str, outdir: str, version: Optional[str] = None, date: Optional[str] = None) -> List[str]:
    dump = subprocess.run([binary, "--experimental-dump-help"], check=True, capture_output=True, text=True).stdout
    root_cmd = json.loads(dump)["command"]
    root = root_cmd["commandName"]
    if version is None:
        version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip() or root
        if not version.startswith(root):
            version = f"{root} {version}"
    date = date or datetime.date.today().isoformat()
    os.makedirs(outdir, exist_ok=True)
    written = []

    def walk(cmd: Dict, path: List[str]) -> None:
        f = os.path.join(outdir, "-".join(path) + ".1")
        with open(f, "w", encoding="utf-8") as fh:
            fh.write(page(cmd, path, root, version, date))
        written.append(f)
        for s in cmd.get("subcommands", []):
            if s.get("shouldDisplay", True) and s["commandName"] != "help":
                walk(s, path + [s["commandName"]])

    walk(root_cmd, [root])
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("binary")
    p.add_argument("outdir")
    p.add_argument("--version", dest="ver")
    p.add_argument("--date")
    a = p.parse_args(argv)
    for f in generate(a.binary, a.outdir, a.ver, a.date):
        print(f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
