#!/usr/bin/env bash
# Build dist/dlrd_<version>_<arch>.deb with Debian's own tools (dpkg-deb,
# gzip, md5sum; no debhelper, no source package).
#
# Usage: bash packaging/build-deb.sh [--onedir DIR] [--output DIR]
#   --onedir DIR  a PyInstaller one-dir tree (DIR/dlrd and DIR/_internal/);
#                 default $DLRD_ONEDIR, else dist/dlrd-dir, built by
#                 packaging/build-binary.sh when it is missing.
#   --output DIR  where the .deb goes; default $DLRD_DEB_OUTPUT, else dist.
#   PYTHON        the Python that has dlrd's checkout importable (for the
#                 version and the man page); default .venv/bin/python.
#
# Layout, and why:
#   /usr/lib/dlrd/            the one-dir tree, with /usr/bin/dlrd a relative
#                             symlink to /usr/lib/dlrd/dlrd. One process under
#                             systemd (the one-file binary is a bootloader plus
#                             a child, which NotifyAccess=main and WATCHDOG_PID
#                             cannot follow) and nothing unpacked at each start,
#                             so it is ready sooner and runs under noexec /tmp.
#   /lib/systemd/system/dlrd.service
#                             systemd/dlrd.service: dlrd binds the ini's addresses
#                             itself. Enabled on install, not started: the ini
#                             needs the operator's listen, TLS and PIN first.
#   /usr/share/dlrd/socket-activated/
#                             the socket-activated dlrd.service, dlrd.socket and
#                             dlrd-http.socket, to copy into /etc/systemd/system
#                             (which overrides /lib). Not installed as units: both
#                             variants are named dlrd.service, so only one can be
#                             in /lib, and a dlrd.socket that anyone enabled
#                             beside the plain unit would fight it for port 443.
#   Both variants are generated here with ExecStart's /usr/local/bin/dlrd turned
#   into /usr/bin/dlrd and Documentation= into man:dlrd(8).
#   /usr/lib/sysusers.d/dlrd.conf, /etc/dlrd/dlrd.ini (conffile, 0640; postinst
#   gives it and /etc/dlrd the group dlrd, which exists only from then on),
#   /etc/logrotate.d/dlrd (conffile), /usr/share/dlrd/certbot-deploy-hook (the
#   operator links it into /etc/letsencrypt: certbot's tree is certbot's),
#   /usr/share/man/man8/dlrd.8.gz from dlrd/manpage.py (so it follows --help),
#   /usr/share/doc/dlrd/{copyright,changelog.gz,README.md.gz}.
set -euo pipefail
umask 022
caller=$PWD
absolute() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$caller/$1" ;; esac; }
cd "$(dirname "$0")/.."
root=$PWD

# Relative paths are the caller's, not the checkout's.
onedir=${DLRD_ONEDIR:+$(absolute "$DLRD_ONEDIR")}
output=${DLRD_DEB_OUTPUT:+$(absolute "$DLRD_DEB_OUTPUT")}
output=${output:-dist}
while [ $# -gt 0 ]; do
    case $1 in
        --onedir) onedir=$(absolute "${2:?--onedir needs a directory}"); shift 2 ;;
        --output) output=$(absolute "${2:?--output needs a directory}"); shift 2 ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-deb.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
die() { echo "build-deb.sh: $*" >&2; exit 1; }

for tool in dpkg-deb dpkg gzip md5sum readelf strip; do
    command -v "$tool" >/dev/null || die "$tool is missing: apt-get install dpkg gzip coreutils binutils"
done
python=${PYTHON:-}
if [ -z "$python" ]; then
    if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi

if [ -z "$onedir" ]; then
    onedir=dist/dlrd-dir
    if [ ! -x "$onedir/dlrd" ]; then
        [ -f packaging/build-binary.sh ] || die "no $onedir and no packaging/build-binary.sh to build it; give --onedir DIR"
        bash packaging/build-binary.sh
    fi
fi
[ -x "$onedir/dlrd" ] && [ -d "$onedir/_internal" ] \
    || die "$onedir is not a PyInstaller one-dir tree (no $onedir/dlrd or $onedir/_internal)"

version=$(PYTHONPATH=$root "$python" -c 'import dlrd; print(dlrd.__version__)') \
    || die "$python cannot import dlrd from $root; set PYTHON to the checkout's venv python"
frozen=$(env -i "$onedir/dlrd" version) || die "$onedir/dlrd version failed"
[ "$frozen" = "dlrd $version" ] \
    || die "$onedir/dlrd says '$frozen' but dlrd/__init__.py says $version: rebuild it (packaging/build-binary.sh)"
# Same version, older code: the man page (made from the checkout) and the binary would disagree.
stale=$(find dlrd packaging/dlrd.spec packaging/entry.py -name '*.py' -newer "$onedir/dlrd" -print -quit \
        2>/dev/null || true)
[ -z "$stale" ] || die "$onedir was built before $stale changed: rebuild it (packaging/build-binary.sh)"
changelog_version=$(sed -n '1s/^dlrd (\([^)]*\)).*/\1/p' packaging/debian/changelog)
[ "$changelog_version" = "$version" ] \
    || die "packaging/debian/changelog starts at $changelog_version, not $version: add an entry for $version at its top"
arch=$(dpkg --print-architecture)

# Reproducible: every date is the changelog entry's (man page, mtimes, dpkg-deb's own).
changelog_date=$(sed -n 's/^ -- .*>  //p' packaging/debian/changelog | head -n 1)
[ -n "$changelog_date" ] || die "packaging/debian/changelog's first entry has no ' -- name <mail>  date' trailer"
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(date -d "$changelog_date" +%s)}
export SOURCE_DATE_EPOCH

stage=$(mktemp -d "${TMPDIR:-/tmp}/dlrd-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT
pkg=$stage/dlrd

# The tree: directories 0755, files 0644, the bootloader 0755; shared objects
# need no execute bit (lintian: shared-library-is-executable).
mkdir -p "$pkg/usr/lib/dlrd" "$pkg/usr/bin"
cp -R "$onedir/." "$pkg/usr/lib/dlrd/"
find "$pkg/usr/lib/dlrd" -type d -exec chmod 0755 {} +
find "$pkg/usr/lib/dlrd" -type f -exec chmod 0644 {} +
chmod 0755 "$pkg/usr/lib/dlrd/dlrd"
# Debian ships shared objects stripped (lintian: unstripped-binary-or-object),
# and a build machine's RUNPATH is meaningless here (drop_runpath.py says why).
# The bootloader keeps its symbols: PyInstaller's archive lives in its ELF sections.
find "$pkg/usr/lib/dlrd/_internal" -type f -name '*.so*' -exec strip --strip-unneeded --remove-section=.comment {} +
find "$pkg/usr/lib/dlrd/_internal" -type f -name '*.so*' -exec "$python" packaging/debian/drop_runpath.py {} + >/dev/null
ln -s ../lib/dlrd/dlrd "$pkg/usr/bin/dlrd"

unit() {  # unit SOURCE DEST NOTE: the repository's unit with the package's paths, NOTE for its "Install:" line
    sed -e 's#/usr/local/bin/dlrd#/usr/bin/dlrd#g' \
        -e 's#^Documentation=.*#Documentation=man:dlrd(8)#' \
        -e "s#Install: see README \"Running under systemd\"\.#$3#" \
        -e 's#install systemd/socket-activated/dlrd.service in#copy /usr/share/dlrd/socket-activated/dlrd.service into /etc/systemd/system/, in#' \
        -e 's#with systemd/dlrd.socket\.#with dlrd.socket from there.#' \
        -e 's#systemd/socket-activated/dlrd\.service#/usr/share/dlrd/socket-activated/dlrd.service#g' \
        -e 's#systemd/dlrd\.sysusers#/usr/lib/sysusers.d/dlrd.conf#g' \
        -e 's#\([ (]\)systemd/dlrd\.service#\1/lib/systemd/system/dlrd.service#g' \
        -e 's#\([ (]\)systemd/\(dlrd[-a-z]*\.[a-z]*\)#\1\2#g' \
        "$1" > "$2"
    chmod 0644 "$2"
    grep -q '^ExecStart=/usr/bin/dlrd ' "$2" || [ "${1##*.}" = socket ] || die "$1: no ExecStart=/usr/local/bin/dlrd to point at /usr/bin/dlrd"
    ! grep -q '/usr/local/bin' "$2" || die "$2 still names /usr/local/bin"
}
install -d -m 0755 "$pkg/lib/systemd/system" "$pkg/usr/share/dlrd/socket-activated"
installed='Installed by the dlrd package, enabled, not started.'
switch='Install: see /usr/share/dlrd/socket-activated/README.'
unit systemd/dlrd.service "$pkg/lib/systemd/system/dlrd.service" "$installed"
unit systemd/socket-activated/dlrd.service "$pkg/usr/share/dlrd/socket-activated/dlrd.service" "$switch"
unit systemd/dlrd.socket "$pkg/usr/share/dlrd/socket-activated/dlrd.socket" "$switch"
unit systemd/dlrd-http.socket "$pkg/usr/share/dlrd/socket-activated/dlrd-http.socket" "$switch"
install -m 0644 systemd/notify-reload.conf "$pkg/usr/share/dlrd/notify-reload.conf"
cat > "$pkg/usr/share/dlrd/socket-activated/README" <<'EOF'
dlrd on sockets systemd holds (443 with TLS; 127.0.0.1:8080 plain HTTP).

The package installs /lib/systemd/system/dlrd.service, where dlrd binds the
addresses of /etc/dlrd/dlrd.ini itself. For socket activation instead, as
root (the files in /etc/systemd/system override the package's unit, and
survive its upgrades):

    cp /usr/share/dlrd/socket-activated/dlrd.service /usr/share/dlrd/socket-activated/dlrd.socket /usr/share/dlrd/socket-activated/dlrd-http.socket /etc/systemd/system/
    systemctl daemon-reload && systemctl reenable dlrd && systemctl restart dlrd.socket dlrd

Back to the package's unit:

    systemctl disable --now dlrd.socket dlrd-http.socket; rm /etc/systemd/system/dlrd.service /etc/systemd/system/dlrd.socket /etc/systemd/system/dlrd-http.socket
    systemctl daemon-reload && systemctl restart dlrd

Switch back before `apt remove dlrd`: an enabled dlrd.socket left behind
would hold 443 and start a dlrd that is no longer there.

On systemd 253 and later, `systemctl reload dlrd` can wait until dlrd has
reloaded: install -D -m 644 /usr/share/dlrd/notify-reload.conf /etc/systemd/system/dlrd.service.d/notify-reload.conf
EOF

install -D -m 0644 systemd/dlrd.sysusers "$pkg/usr/lib/sysusers.d/dlrd.conf"
install -d -m 0750 "$pkg/etc/dlrd"
install -m 0640 etc/dlrd.ini "$pkg/etc/dlrd/dlrd.ini"
install -D -m 0644 packaging/logrotate/dlrd "$pkg/etc/logrotate.d/dlrd"
install -m 0755 systemd/certbot-deploy-hook "$pkg/usr/share/dlrd/certbot-deploy-hook"

install -D -m 0644 packaging/debian/lintian-overrides "$pkg/usr/share/lintian/overrides/dlrd"
install -d -m 0755 "$pkg/usr/share/man/man8" "$pkg/usr/share/doc/dlrd"
PYTHONPATH=$root "$python" -m dlrd.manpage -o "$pkg/usr/share/man/man8/dlrd.8"
gzip -9n "$pkg/usr/share/man/man8/dlrd.8"
install -m 0644 packaging/debian/copyright "$pkg/usr/share/doc/dlrd/copyright"
# A native package (its version is dlrd's own, no Debian revision): policy
# 12.7 names its Debian changelog changelog.gz, not changelog.Debian.gz.
gzip -9n < packaging/debian/changelog > "$pkg/usr/share/doc/dlrd/changelog.gz"
gzip -9n < README.md > "$pkg/usr/share/doc/dlrd/README.md.gz"
chmod 0644 "$pkg/usr/share/doc/dlrd/"*.gz

# Depends: every library the tree's ELF files need that the tree does not
# carry must be glibc's (PyInstaller bundles the rest), at the newest
# GLIBC_x.y symbol version any of them asks for.
bundled=$(find "$pkg/usr/lib/dlrd" -type f -name '*.so*' -printf '%f\n' | sort -u)
glibc_libs='^(libc|libm|libdl|libpthread|librt|libutil|libresolv|libanl|ld-linux-x86-64|ld-linux-aarch64|ld-linux-armhf|ld-linux)\.so'
glibc=2.2.5
while IFS= read -r -d '' elf; do
    head -c 4 "$elf" | grep -q 'ELF' || continue
    for needed in $(readelf -d "$elf" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
        grep -qxF "$needed" <<<"$bundled" && continue
        [[ $needed =~ $glibc_libs ]] || die "$elf needs $needed, which is neither in the tree nor glibc's: bundle it or add it to Depends"
    done
    for v in $(readelf -V "$elf" 2>/dev/null | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV); do
        glibc=$(printf '%s\n%s\n' "$glibc" "$v" | sort -V | tail -n 1)
    done
done < <(find "$pkg/usr/lib/dlrd" -type f -print0)
depends="libc6 (>= $glibc)"
# control.in adds procps (the units' ExecReload=/bin/kill: debootstrap's minbase
# has no /bin/kill, and systemctl reload then fails with 203/EXEC) and
# systemd | adduser (postinst makes the user with either).

# Installed-Size in KiB as dpkg-gencontrol counts it: each file rounded up.
installed_size=$(find "$pkg" -type f -printf '%s\n' | awk '{ kib += int(($1 + 1023) / 1024) } END { print kib + 0 }')

install -d -m 0755 "$pkg/DEBIAN"
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@DEPENDS@/$depends/" \
    -e "s/@INSTALLED_SIZE@/$installed_size/" packaging/debian/control.in > "$pkg/DEBIAN/control"
printf '%s\n' /etc/dlrd/dlrd.ini /etc/logrotate.d/dlrd > "$pkg/DEBIAN/conffiles"
for script in postinst prerm postrm; do
    install -m 0755 "packaging/debian/$script" "$pkg/DEBIAN/$script"
done
(cd "$pkg" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) > "$pkg/DEBIAN/md5sums"
chmod 0644 "$pkg/DEBIAN/control" "$pkg/DEBIAN/conffiles" "$pkg/DEBIAN/md5sums"
find "$pkg" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

mkdir -p "$output"
deb=$output/dlrd_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null
echo "$deb ($(du -h "$deb" | cut -f1), Depends: $depends)"
