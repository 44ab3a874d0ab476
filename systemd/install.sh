#!/usr/bin/env bash
# Installs saliencyd and saliencyctl: release build, both binaries, shell completions (bash, zsh,
# fish) and man pages generated from the binaries' own argument definitions, the systemd unit,
# the example configuration and the unit's documentation. Run from anywhere in the repository.
#
#   sudo systemd/install.sh                       # build, install under /usr/local, unit to /etc
#   systemd/install.sh --prefix ~/.local --no-systemd
#   systemd/install.sh --destdir /tmp/stage --bin-dir .build/debug --no-build   (packaging, tests)
#
# Options:
#   --prefix DIR     installation prefix (default /usr/local): DIR/bin, DIR/share/man/man1,
#                    DIR/share/bash-completion/completions, DIR/share/zsh/site-functions,
#                    DIR/share/fish/vendor_completions.d, DIR/share/doc/saliencyd
#   --destdir DIR    stage everything under DIR (DESTDIR convention; nothing outside DIR is touched)
#   --bin-dir DIR    take the binaries from DIR instead of building (implies --no-build)
#   --no-build       do not run `swift build -c release`
#   --no-systemd     skip the unit (/etc/systemd/system) and the configuration (/etc/saliencyd)
#   --static         build with --static-swift-stdlib (toolchain under /home or /root; see README)
#   --man-plugin     man pages from swift-argument-parser's generate-manual plugin (mdoc, one page per
#                    command; builds the plugin's tool first: ~2 minutes on 2 cores, offline)
# Man pages by default: systemd/manpages.py writes them from `--experimental-dump-help` JSON in a
# second, with Python 3 only (man(7) macros). One page per command: saliencyctl(1), saliencyctl-top(1), ...
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
prefix=/usr/local destdir= bindir= build=1 systemd=1 static=() manplugin=0
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
        --destdir) destdir=${2:?--destdir needs a directory}; shift 2 ;;
        --bin-dir) bindir=${2:?--bin-dir needs a directory}; build=0; shift 2 ;;
        --no-build) build=0; shift ;;
        --no-systemd) systemd=0; shift ;;
        --static) static=(--static-swift-stdlib); shift ;;
        --man-plugin) manplugin=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
done

if [ -z "$bindir" ]; then
    if [ "$build" = 1 ]; then
        echo "==> building release binaries (swift build -c release; the first build takes minutes)"
        (cd "$repo" && swift build -c release "${static[@]}" --product saliencyd && swift build -c release "${static[@]}" --product saliencyctl)
    fi
    bindir=$(cd "$repo" && swift build -c release --show-bin-path)
fi
for b in saliencyd saliencyctl; do
    [ -x "$bindir/$b" ] || { echo "install.sh: $bindir/$b is missing; build first (swift build -c release) or pass --bin-dir" >&2; exit 1; }
done

root=$destdir$prefix
man1=$root/share/man/man1
bashc=$root/share/bash-completion/completions
zshc=$root/share/zsh/site-functions
fishc=$root/share/fish/vendor_completions.d
install -d -m 0755 "$root/bin" "$man1" "$bashc" "$zshc" "$fishc" "$root/share/doc/saliencyd"

echo "==> binaries → $root/bin"
for b in saliencyd saliencyctl; do install -m 0755 "$bindir/$b" "$root/bin/$b"; done

echo "==> shell completions (bash, zsh, fish) from --generate-completion-script"
for b in saliencyd saliencyctl; do
    "$bindir/$b" --generate-completion-script bash > "$bashc/$b"
    "$bindir/$b" --generate-completion-script zsh  > "$zshc/_$b"
    "$bindir/$b" --generate-completion-script fish > "$fishc/$b.fish"
    chmod 0644 "$bashc/$b" "$zshc/_$b" "$fishc/$b.fish"
done

echo "==> man pages → $man1"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
plugin_out="$repo/.build/plugins/GenerateManual/outputs"
if [ "$manplugin" = 1 ] && (cd "$repo" && swift package generate-manual --multi-page --configuration release >"$tmp/plugin.log" 2>&1) \
        && ls "$plugin_out"/saliencyctl/*.1 "$plugin_out"/saliencyd/*.1 >/dev/null 2>&1; then
    cp "$plugin_out"/saliencyctl/*.1 "$plugin_out"/saliencyd/*.1 "$tmp/"
    echo "    (generate-manual plugin)"
else
    [ "$manplugin" = 1 ] && echo "    generate-manual plugin failed (log: tail $tmp/plugin.log); using systemd/manpages.py" && tail -n 5 "$tmp/plugin.log"
    for b in saliencyd saliencyctl; do python3 "$repo/systemd/manpages.py" "$bindir/$b" "$tmp" >/dev/null; done
fi
install -m 0644 "$tmp"/*.1 "$man1/"
ls "$tmp" | sed 's/^/    /'

install -m 0644 "$repo/systemd/README.md" "$root/share/doc/saliencyd/README.md"

if [ "$systemd" = 1 ]; then
    etc=$destdir/etc
    echo "==> systemd unit → $etc/systemd/system/saliencyd.service; configuration → $etc/saliencyd"
    install -d -m 0755 "$etc/systemd/system" "$etc/saliencyd"
    sed "s#/usr/local/bin/saliencyd#$prefix/bin/saliencyd#" "$repo/systemd/saliencyd.service" > "$tmp/saliencyd.service"
    install -m 0644 "$tmp/saliencyd.service" "$etc/systemd/system/saliencyd.service"
    if [ -e "$etc/saliencyd/saliencyd.toml" ]; then
        install -m 0644 "$repo/systemd/saliencyd.toml" "$etc/saliencyd/saliencyd.toml.example"
        echo "    kept your $etc/saliencyd/saliencyd.toml; the shipped one is saliencyd.toml.example"
    else
        install -m 0644 "$repo/systemd/saliencyd.toml" "$etc/saliencyd/saliencyd.toml"
    fi
fi

echo "==> done: $("$root/bin/saliencyctl" --version), $("$root/bin/saliencyd" --version)"
case ":$PATH:" in *":$prefix/bin:"*) ;; *) echo "    $prefix/bin is not on your PATH: export PATH=$prefix/bin:\$PATH" ;; esac
if [ -z "$destdir" ] && [ "$systemd" = 1 ]; then
    echo "    next: saliencyd --config /etc/saliencyd/saliencyd.toml --check-config && sudo systemctl daemon-reload && sudo systemctl enable --now saliencyd"
fi
echo "    completions take effect in new shells (bash needs the bash-completion package); man saliencyctl-top"
