#!/bin/sh
# `npm run package`: the Debian package, built with dpkg-deb from this
# checkout's build (run `npm run build` and the addon build first; the npm
# script does). Output: dist/deb/relockd_VERSION_ARCH.deb.
#
#   RELOCKD_DEB_VERSION=0.1.0+test2  package version (default: package.json's;
#                                    written into the packaged package.json too,
#                                    so the daemon reports it)
#   RELOCKD_DEB_OUT=DIR              output directory
#
# Layout: the daemon lives in /usr/lib/relockd (bundles, validators, schemas,
# addon, the npm packages it runs with); /usr/sbin/relockd and
# /usr/bin/relockctl link to its entry scripts. Node itself comes from the
# nodejs package (Depends: nodejs (>= 20.19~); see README "Debian package").
set -eu
cd "$(dirname "$0")/.."
here=$(pwd)

version=${RELOCKD_DEB_VERSION:-$(node -p 'require("./package.json").version')}
arch=$(dpkg --print-architecture)
out=${RELOCKD_DEB_OUT:-dist/deb}
for f in dist/relockd-main.cjs dist/relockctl.mjs dist/relockd-runner.cjs dist/validators/state.cjs build/Release/relockd_native.node build/Release/relockd_exec_hold.so; do
	[ -f "$f" ] || { echo "build-deb: $f is missing: run npm run build and sh scripts/build-native.sh" >&2; exit 1; }
done

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/root
lib=$root/usr/lib/relockd
umask 022

install -d "$lib/bin" "$lib/dist/validators" "$lib/schemas" "$lib/build/Release"
# package.json: what the daemon reads at start (version) and what marks its root.
node -e '
  const p = require("./package.json");
  const out = { name: p.name, version: process.argv[1], description: p.description, license: p.license, type: p.type, private: true, engines: p.engines };
  require("fs").writeFileSync(process.argv[2], JSON.stringify(out, null, 2) + "\n");
' "$version" "$lib/package.json"
install -m 0755 bin/relockd.cjs bin/relockctl.cjs "$lib/bin/"
install -m 0644 dist/relockd-main.cjs dist/relockctl.mjs dist/relockd-runner.cjs "$lib/dist/"
install -m 0644 dist/validators/*.cjs "$lib/dist/validators/"
install -m 0644 schemas/*.json "$lib/schemas/"
install -m 0644 build/Release/relockd_native.node "$lib/build/Release/"
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$lib/build/Release/relockd_native.node"
# Preloaded into the image a re-exec starts (native/exec_hold.c); not a public library.
install -m 0644 build/Release/relockd_exec_hold.so "$lib/build/Release/"
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$lib/build/Release/relockd_exec_hold.so"

# The npm packages relockd runs with (production dependencies, exactly the
# versions of package-lock.json); node-addon-api is headers for the build only.
npm ls --omit=dev --all --parseable 2>/dev/null | sed "s|^$here/||" | grep '^node_modules/' | grep -v '^node_modules/node-addon-api$' | sort | while read -r p; do
	install -d "$lib/$(dirname "$p")"
	cp -a "$p" "$lib/$(dirname "$p")/"
done
# What a runtime tree does not need (tests, type declarations, source maps, editor files).
find "$lib/node_modules" \( -name '*.html' -o -name '*.sh' -o -name '.husky' -o -name '.gitattributes' -o -name 'bin.js' -o -name '*.d.ts' -o -name '*.d.mts' -o -name '*.d.cts' -o -name '*.map' -o -name '*.ts' -o -name '.npmignore' -o -name '.eslintrc*' -o -name '.prettierrc*' -o -name '.editorconfig' -o -name '.travis.yml' -o -name '.nycrc' -o -name '.taprc' -o -name '.github' -o -name 'test' -o -name 'tests' -o -name 'benchmarks' -o -name 'docs' -o -name 'CHANGELOG*' -o -name 'node_modules/.bin' -o -name '.bin' \) -prune -exec rm -rf {} +
find "$lib/node_modules" -type f -exec chmod 0644 {} +
find "$lib/node_modules" -type d -exec chmod 0755 {} +

install -d "$root/usr/sbin" "$root/usr/bin"
ln -s ../lib/relockd/bin/relockd.cjs "$root/usr/sbin/relockd"
ln -s ../lib/relockd/bin/relockctl.cjs "$root/usr/bin/relockctl"

install -d "$root/lib/systemd/system"
install -m 0644 units/relockd.service units/relockd.socket units/relockd-admin.socket units/relockd-metrics.service units/relockd-metrics.timer "$root/lib/systemd/system/"
install -d "$root/usr/share/relockd/virtlockd-takeover/virtlockd.service.d"
install -m 0644 units/virtlockd-takeover/README.md "$root/usr/share/relockd/virtlockd-takeover/"
install -m 0644 units/virtlockd-takeover/virtlockd.service.d/relockd.conf "$root/usr/share/relockd/virtlockd-takeover/virtlockd.service.d/"
install -d "$root/etc/default"
install -m 0644 units/relockd.default "$root/etc/default/relockd"

install -d "$root/usr/share/man/man8"
for m in relockd relockctl; do
	sed "s/@VERSION@/$version/" "debian/man/$m.8" | gzip -9n >"$root/usr/share/man/man8/$m.8.gz"
done
doc=$root/usr/share/doc/relockd
install -d "$doc"
install -m 0644 debian/copyright "$doc/copyright"
# A native package (no Debian revision): changelog.gz, not changelog.Debian.gz.
sed "s/@VERSION@/$version/" debian/changelog | gzip -9n >"$doc/changelog.gz"
install -m 0644 docs/admin.md docs/configuration.md docs/metrics.md "$doc/"

install -d "$root/usr/share/lintian/overrides"
install -m 0644 debian/lintian-overrides "$root/usr/share/lintian/overrides/relockd"

# The addon's shared-library dependencies (libc6, libstdc++6, ...), as dh_shlibdeps
# would compute them; its napi_* symbols come from node itself.
shl=$stage/shlibdeps
mkdir -p "$shl/debian"
printf 'Source: relockd\n\nPackage: relockd\nArchitecture: any\n' >"$shl/debian/control"
shlibs=$(cd "$shl" && dpkg-shlibdeps -O "$lib/build/Release/relockd_native.node" "$lib/build/Release/relockd_exec_hold.so" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
[ -n "$shlibs" ] || { echo "build-deb: dpkg-shlibdeps found no dependencies for the addon" >&2; exit 1; }

install -d "$root/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" -e "s/@SHLIBS@/$shlibs/" debian/control.in >"$root/DEBIAN/control"
echo /etc/default/relockd >"$root/DEBIAN/conffiles"
install -m 0755 debian/postinst debian/prerm debian/postrm "$root/DEBIAN/"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | LC_ALL=C sort | xargs md5sum) >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/md5sums" "$root/DEBIAN/conffiles" "$root/DEBIAN/control"

mkdir -p "$out"
deb=$out/relockd_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
