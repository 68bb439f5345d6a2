#!/usr/bin/env bash
# deny.sh - cargo deny check with deny.toml (advisories, licenses, bans, sources), offline:
# the RustSec advisory database comes from a snapshot directory, never from the network (CI
# machines cannot reach GitHub). Exit status: cargo deny's (non-zero on any finding), or 2 when
# the snapshot is missing.
#
# Environment:
#   VMBRIDGE_ADVISORY_DB        the snapshot: a RustSec advisory-db tree (crates/, and either
#                               .git or SNAPSHOT.md naming its date); default: ../shared/advisory-db
#                               beside the checkout, where this workplace keeps it
#   VMBRIDGE_ADVISORY_DB_CACHE  where the stub cargo-deny opens is made (default target/advisory-dbs);
#                               nothing of the snapshot is copied, crates/ is a symlink to it
set -euo pipefail
cd "$(dirname "$0")/.."

db=${VMBRIDGE_ADVISORY_DB:-$(cd .. && pwd)/shared/advisory-db}
if [[ ! -d "$db/crates" ]]; then
    echo "deny.sh: no RustSec advisory database at '$db' (no crates/ directory)." >&2
    echo "deny.sh: set VMBRIDGE_ADVISORY_DB to a snapshot of https://github.com/rustsec/advisory-db." >&2
    exit 2
fi
db=$(cd "$db" && pwd)

# cargo-deny opens <db-path>/<last URL segment>-<xxhash64 of the URL>, for deny.toml's db-urls
# (https://github.com/rustsec/advisory-db), and takes the database's age from .git/FETCH_HEAD's
# modification time (or, without it, from HEAD's commit date).
cache=${VMBRIDGE_ADVISORY_DB_CACHE:-target/advisory-dbs}
stub="$cache/advisory-db-3157b0e258782691"
rm -rf "$stub"
mkdir -p "$cache"
if [[ -d "$db/.git" ]]; then
    ln -s "$db" "$stub"
else
    date=$(sed -n 's/.*advisory-db at [0-9a-f]*, \([0-9]\{4\}-[0-9]\{2\}-[0-9]\{2\}\).*/\1/p' "$db/SNAPSHOT.md" 2>/dev/null | head -n1)
    if [[ -z "$date" ]]; then
        echo "deny.sh: '$db' is neither a git checkout nor has a SNAPSHOT.md with its date" \
            "('... advisory-db at <commit>, YYYY-MM-DD'): its age cannot be checked." >&2
        exit 2
    fi
    mkdir -p "$stub/.git"
    ln -s "$db/crates" "$stub/crates"
    touch -d "$date" "$stub/.git/FETCH_HEAD"
    echo "deny.sh: advisory database snapshot of $date at $db" >&2
fi
VMBRIDGE_ADVISORY_DB_CACHE=$cache exec cargo deny --offline --locked check
