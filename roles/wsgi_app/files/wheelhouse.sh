#!/bin/sh
# Prepare an app's wheelhouse on the controller, in one task per host and run (it was six, each
# a round of its own even when there was nothing to do):
# 1. the locked dependencies, downloaded for the host's Python and architecture (pip has no
#    module for cross-platform downloads). A lock already downloaded for them is not checked
#    again (pip takes a second or two to do it): STAMP names the lock's sha1 and the platforms
#    (remove the wheelhouse directory to start the cache afresh);
# 2. the wheels of the app and its local packages, each by build-wheel.sh (beside this file);
# 3. one tar of the wheelhouse, with fixed order, times and owners: the same wheels always give
#    the same archive, which is compared with the host's copy and copied as one file.
# Prints "downloaded" when pip saved a file, then build-wheel.sh's line for each project, in
# order ("changed <wheel>" or "unchanged <wheel>").
# Usage: wheelhouse.sh PYTHON WHEELHOUSE LOCK STAMP PYTHON_TAG ARCH PLATFORM... -- PROJECT...
set -eu
# The hosts of a run share a wheelhouse and run this at once: one at a time holds it, under a
# lock (flock) that the controller's Python takes before running this script again.
if [ -z "${WHEELHOUSE_LOCKED:-}" ]; then
  mkdir -p "$(dirname "$2")"
  WHEELHOUSE_LOCKED=1 exec "$1" -c 'import fcntl, os, sys
lock = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
fcntl.flock(lock, fcntl.LOCK_EX)
os.set_inheritable(lock, True)
os.execvp("sh", ["sh", *sys.argv[2:]])' "$2.lock" "$0" "$@"
fi
python=$1 wheelhouse=$2 lock=$3 stamp=$4 tag=$5 arch=$6
shift 6
platforms=""
while [ "$1" != "--" ]; do
  platforms="$platforms --platform=${1}_$arch"
  shift
done
shift
here=$(dirname "$0")
mkdir -p "$wheelhouse"
chmod 0755 "$wheelhouse"
if [ ! -f "$stamp" ]; then
  # pip downloads for another platform only from a lock without environment markers.
  sed -E 's/ ;.* / /' "$lock" > "$wheelhouse.download.txt"
  # shellcheck disable=SC2086 # one word per platform
  saved=$("$python" -m pip download --quiet --no-deps --require-hashes --only-binary=:all: \
    --implementation cp --python-version "$tag" --dest "$wheelhouse" \
    -r "$wheelhouse.download.txt" --progress-bar off -v $platforms)
  case $saved in *"Saved "*) echo downloaded ;; esac
  printf '%s\n' "$lock" > "$stamp"
fi
for project in "$@"; do
  sh "$here/build-wheel.sh" "$python" "$project" "$wheelhouse/app"
done
tar --sort=name --mtime=@315532800 --owner=0 --group=0 --numeric-owner \
    --exclude='.built-*' --exclude='.downloaded-*' -C "$wheelhouse" -cf "$wheelhouse.tar" .
