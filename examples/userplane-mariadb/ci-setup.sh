#!/usr/bin/env bash
# CI: make sure the local MariaDB answers and holds a test user, then print the URL to export:
#
#     export USERPLANE_TEST_MARIADB_URL="$(bash examples/userplane-mariadb/ci-setup.sh)"
#
# The user `userplane` (from 127.0.0.1 and localhost) may create and drop only the databases
# named userplane_test_%, which is what the tests make and drop. Its password is
# USERPLANE_MARIADB_PASSWORD, or a fresh random one (set again on every run).
# Needs root (MariaDB's root logs in through the unix socket). Messages go to stderr.
set -euo pipefail

ping() { mariadb-admin --user=root --silent ping >/dev/null 2>&1; }

if ! ping; then
    echo "ci-setup: starting MariaDB" >&2
    # `service` may report failure while the server does come up: the wait below decides.
    service mariadb start >&2 || true
    for _ in $(seq 1 30); do ping && break; sleep 1; done
    ping || { echo "ci-setup: MariaDB does not answer on its socket" >&2; exit 1; }
fi

password="${USERPLANE_MARIADB_PASSWORD:-$(openssl rand -hex 16)}"
for host in 127.0.0.1 localhost; do
    mariadb --user=root <<SQL
CREATE USER IF NOT EXISTS 'userplane'@'${host}';
ALTER USER 'userplane'@'${host}' IDENTIFIED BY '${password}';
GRANT ALL PRIVILEGES ON \`userplane\\_test\\_%\`.* TO 'userplane'@'${host}';
SQL
done
echo "ci-setup: MariaDB user userplane@127.0.0.1 can create userplane_test_% databases" >&2
echo "mariadb://userplane:${password}@127.0.0.1:3306/"
