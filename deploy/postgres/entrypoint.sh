#!/bin/sh
# Start PostgreSQL for paysaga; at the first start, create the server and one database per service.
#
# Nobody logs in with a password. Each service connects over TLS with its own client certificate
# from the paysaga CA (the one it also uses for gRPC and NATS), and the certificate's subject
# "CN=<service>,OU=service,O=paysaga" maps to the role of the same name, which may connect only
# to its own database. The server's own certificate and key come from the certs job (/certs).
set -eu

services="payments inventory ledger"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    # The superuser, named after the container's user, logs in only over the local socket.
    initdb --pgdata="$PGDATA" --username=paysaga --auth-local=peer --auth-host=reject \
        --encoding=UTF8 --locale=C.UTF-8
    {
        echo "# Written at the first start by paysaga-postgres."
        echo "local all paysaga peer"
        for service in $services; do
            echo "hostssl $service $service all cert clientname=DN map=services"
        done
    } > "$PGDATA/pg_hba.conf"
    # Quoted: a comma would otherwise split the pattern into a list.
    printf '%s\n' 'services "/^CN=([a-z0-9-]+),OU=service,O=paysaga$" \1' > "$PGDATA/pg_ident.conf"
    cat >> "$PGDATA/postgresql.conf" <<CONF

# paysaga
listen_addresses = '*'
unix_socket_directories = '/tmp'
ssl = on
ssl_cert_file = '/certs/postgres.crt'
ssl_key_file = '/certs/postgres.key'
ssl_ca_file = '/certs/ca.crt'
ssl_min_protocol_version = 'TLSv1.2'
fsync = on
synchronous_commit = on
max_connections = 200
CONF
    pg_ctl --pgdata="$PGDATA" --options="-c listen_addresses=''" --wait start
    for service in $services; do
        psql --host=/tmp --dbname=postgres --quiet --set=ON_ERROR_STOP=1 \
            --command="CREATE ROLE $service LOGIN" \
            --command="CREATE DATABASE $service OWNER $service" \
            --command="REVOKE ALL ON DATABASE $service FROM PUBLIC"
    done
    pg_ctl --pgdata="$PGDATA" --mode=fast --wait stop
fi

exec postgres -D "$PGDATA"
