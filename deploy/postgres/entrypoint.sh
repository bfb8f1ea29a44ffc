#!/bin/sh
# Start PostgreSQL for paysaga; the first time, create the server and one database per service.
#
# Nobody logs in with a password. Each service connects over TLS with its own client certificate
# from the paysaga CA (the one it also uses for gRPC and NATS), and the certificate's subject
# "CN=<service>,OU=service,O=paysaga" maps to the role of the same name, which may connect only
# to its own database. The nightly reconciliation connects the same way as the role "reconcile",
# which may only read the databases it compares. The server's own certificate and key come from
# the certs job (/certs).
#
# Every step is safe to repeat, and the access rules are written at every start, so a first start
# that was cut short is finished by the next one.
#
# With PAYSAGA_POSTGRES_STANDBY=<name> (docker-compose.standby.yml) this server is a primary that
# waits for a synchronous standby: a commit returns once the standby "<name>" has applied it
# (synchronous_commit = remote_apply), and that standby, logging in with its own certificate as
# the replication role of its name, may stream from it. With PAYSAGA_POSTGRES_PRIMARY=<host>
# it is that standby: its first start copies the primary (pg_basebackup over TLS), every start
# follows it, and "pg_ctl promote" makes it take over.
set -eu

services="payments inventory ledger auth"
standby="${PAYSAGA_POSTGRES_STANDBY:-}"
primary="${PAYSAGA_POSTGRES_PRIMARY:-}"
# The databases the reconciliation reads (paysaga-reconcile), as the role of the same name.
reader=reconcile
read_databases="payments ledger inventory"
# Records which roles, databases and grants exist: when they change (auth was added later, then
# the reconciliation's role), an existing server is completed at its next start.
initialized="$PGDATA/paysaga-initialized"
wanted="services: $services; $reader reads: $read_databases; standby: $standby"

if [ -n "$primary" ]; then
    # A standby: the primary's copy the first time, then its own configuration at every start.
    if [ ! -s "$PGDATA/PG_VERSION" ]; then
        rm -rf "$PGDATA"
        PGSSLMODE=verify-full PGSSLROOTCERT=/certs/ca.crt \
            PGSSLCERT="/certs/$PAYSAGA_POSTGRES_NAME.crt" PGSSLKEY="/certs/$PAYSAGA_POSTGRES_NAME.key" \
            pg_basebackup --host="$primary" --username="$PAYSAGA_POSTGRES_NAME" --pgdata="$PGDATA" \
            --write-recovery-conf --wal-method=stream --checkpoint=fast
        chmod 0700 "$PGDATA"
    fi
    # How it reaches the primary: set below, at every start (pg_basebackup's copy would win).
    sed -i '/^primary_conninfo/d' "$PGDATA/postgresql.auto.conf"
    cat > "$PGDATA/paysaga.conf" <<CONF
# Written at every start by paysaga-postgres (a standby of $primary).
listen_addresses = '*'
unix_socket_directories = '/tmp'
ssl = on
ssl_cert_file = '/certs/$PAYSAGA_POSTGRES_NAME.crt'
ssl_key_file = '/certs/$PAYSAGA_POSTGRES_NAME.key'
ssl_ca_file = '/certs/ca.crt'
ssl_min_protocol_version = 'TLSv1.2'
fsync = on
hot_standby = on
# The name the primary waits for (its synchronous_standby_names).
cluster_name = 'paysaga_standby'
primary_conninfo = 'host=$primary user=$PAYSAGA_POSTGRES_NAME application_name=paysaga_standby sslmode=verify-full sslrootcert=/certs/ca.crt sslcert=/certs/$PAYSAGA_POSTGRES_NAME.crt sslkey=/certs/$PAYSAGA_POSTGRES_NAME.key'
max_connections = 300
CONF
    exec postgres -D "$PGDATA"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    rm -rf "$PGDATA"
    # The superuser, named after the container's user, logs in only over the local socket.
    initdb --pgdata="$PGDATA" --username=paysaga --auth-local=peer --auth-host=reject \
        --encoding=UTF8 --locale=C.UTF-8
fi

{
    echo "# Written at every start by paysaga-postgres."
    echo "local all paysaga peer"
    for service in $services; do
        echo "hostssl $service $service all cert clientname=DN map=services"
    done
    for database in $read_databases; do
        echo "hostssl $database $reader all cert clientname=DN map=services"
    done
    if [ -n "$standby" ]; then
        echo "hostssl replication $standby all cert clientname=DN map=services"
    fi
} > "$PGDATA/pg_hba.conf"
# Quoted: a comma would otherwise split the pattern into a list.
printf '%s\n' 'services "/^CN=([a-z0-9-]+),OU=service,O=paysaga$" \1' > "$PGDATA/pg_ident.conf"
cat > "$PGDATA/paysaga.conf" <<CONF
# Written at every start by paysaga-postgres.
listen_addresses = '*'
unix_socket_directories = '/tmp'
ssl = on
ssl_cert_file = '/certs/postgres.crt'
ssl_key_file = '/certs/postgres.key'
ssl_ca_file = '/certs/ca.crt'
ssl_min_protocol_version = 'TLSv1.2'
fsync = on
synchronous_commit = on
# Each service process pools up to 30 connections: 4 services x 2 replicas, paysaga-oauth and room.
max_connections = 300
CONF
if [ -n "$standby" ]; then
    cat >> "$PGDATA/paysaga.conf" <<CONF
# A commit returns once the standby has applied it (readable there); a standby that was away
# for a while finds the WAL it missed (up to 1 GB).
synchronous_standby_names = 'ANY 1 (paysaga_standby)'
synchronous_commit = remote_apply
wal_keep_size = 1024
CONF
fi
grep -q "^include 'paysaga.conf'" "$PGDATA/postgresql.conf" \
    || echo "include 'paysaga.conf'" >> "$PGDATA/postgresql.conf"

if [ "$(cat "$initialized" 2>/dev/null)" != "$wanted" ]; then
    # No standby is streaming yet: these commits must not wait for one.
    pg_ctl --pgdata="$PGDATA" --options="-c listen_addresses='' -c synchronous_standby_names=''" --wait start
    for service in $services; do
        psql --host=/tmp --dbname=postgres --quiet --set=ON_ERROR_STOP=1 <<SQL
SELECT 'CREATE ROLE $service LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$service')\gexec
SELECT 'CREATE DATABASE $service OWNER $service'
    WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$service')\gexec
REVOKE ALL ON DATABASE $service FROM PUBLIC;
-- Lets the service see whether a synchronous standby streams (it refuses writes quickly if not).
GRANT pg_monitor TO $service;
SQL
    done
    if [ -n "$standby" ]; then
        psql --host=/tmp --dbname=postgres --quiet --set=ON_ERROR_STOP=1 <<SQL
SELECT format('CREATE ROLE %I LOGIN REPLICATION', '$standby')
    WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$standby')\gexec
SQL
    fi
    # Read-only whatever it runs: every transaction of the role is, and it is granted nothing but
    # SELECT. The services create their tables at their first start, as their own role, through
    # their migrations: the default privileges cover those, the grant on all tables the ones an
    # existing server already has.
    psql --host=/tmp --dbname=postgres --quiet --set=ON_ERROR_STOP=1 <<SQL
SELECT 'CREATE ROLE $reader LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$reader')\gexec
ALTER ROLE $reader SET default_transaction_read_only = on;
SQL
    for database in $read_databases; do
        psql --host=/tmp --dbname="$database" --quiet --set=ON_ERROR_STOP=1 <<SQL
GRANT CONNECT ON DATABASE $database TO $reader;
GRANT USAGE ON SCHEMA public TO $reader;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO $reader;
ALTER DEFAULT PRIVILEGES FOR ROLE $database IN SCHEMA public GRANT SELECT ON TABLES TO $reader;
SQL
    done
    pg_ctl --pgdata="$PGDATA" --mode=fast --wait stop
    echo "$wanted" > "$initialized"
fi

exec postgres -D "$PGDATA"
