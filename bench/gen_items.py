#!/usr/bin/env python3
"""Generate and load the `items` benchmark table into MariaDB, PostgreSQL and SQLite.

Schema (same logical table everywhere):
    items(id INT PRIMARY KEY, name VARCHAR(64), price DECIMAL(10,2), created TIMESTAMP)

Rows are deterministic: id 1..N, name 'item-<id zero-padded>', price in 0.01..9999.99
derived from id, created = 2024-01-01 00:00:00 plus id*37 seconds.

Needs only the Python standard library plus the `mariadb` and `psql` command-line
clients (Debian packages mariadb-client / postgresql-client). Connection settings
come from the defaults below (the users created by setup_databases.sh) or flags.

Usage:
    python3 gen_items.py --sqlite PATH [--rows 100000] [--skip-mariadb] [--skip-postgres]
"""

import argparse
import csv
import datetime as dt
import os
import sqlite3
import subprocess
import sys
import tempfile

DDL_MARIADB = (
    "DROP TABLE IF EXISTS items; "
    "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(64), "
    "price DECIMAL(10,2), created TIMESTAMP NULL DEFAULT NULL) ENGINE=InnoDB;"
)
DDL_POSTGRES = (
    "DROP TABLE IF EXISTS items; "
    "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(64), "
    "price DECIMAL(10,2), created TIMESTAMP);"
)
DDL_SQLITE = (
    "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(64), "
    "price DECIMAL(10,2), created TIMESTAMP)"
)

BASE = dt.datetime(2024, 1, 1, 0, 0, 0)


def rows(n):
    for i in range(1, n + 1):
        cents = (i * 7919) % 999999 + 1  # 0.01 .. 9999.99, deterministic
        price = f"{cents // 100}.{cents % 100:02d}"
        created = (BASE + dt.timedelta(seconds=i * 37)).strftime("%Y-%m-%d %H:%M:%S")
        yield (i, f"item-{i:06d}", price, created)


def write_csv(path, n):
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        for r in rows(n):
            w.writerow(r)


def load_mariadb(csv_path, a):
    env = dict(os.environ, MYSQL_PWD=a.my_password)
    sql = (
        DDL_MARIADB + f" LOAD DATA LOCAL INFILE '{csv_path}' INTO TABLE items "
        "FIELDS TERMINATED BY ',' LINES TERMINATED BY '\\n' (id, name, price, created);"
        " ANALYZE TABLE items; SELECT COUNT(*) FROM items;"
    )
    subprocess.run(
        [
            "mariadb",
            "--local-infile=1",
            "-h",
            a.my_host,
            "-P",
            str(a.my_port),
            "-u",
            a.my_user,
            a.my_db,
            "-e",
            sql,
        ],
        check=True,
        env=env,
    )


def load_postgres(csv_path, a):
    env = dict(os.environ, PGPASSWORD=a.pg_password)
    base = [
        "psql",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        a.pg_host,
        "-p",
        str(a.pg_port),
        "-U",
        a.pg_user,
        "-d",
        a.pg_db,
    ]
    subprocess.run([*base, "-c", DDL_POSTGRES], check=True, env=env)
    subprocess.run(
        [
            *base,
            "-c",
            f"\\copy items (id, name, price, created) FROM '{csv_path}' WITH (FORMAT csv)",
        ],
        check=True,
        env=env,
    )
    subprocess.run(
        [*base, "-c", "VACUUM ANALYZE items", "-c", "SELECT COUNT(*) FROM items"],
        check=True,
        env=env,
    )


def load_sqlite(path, n):
    if os.path.exists(path):
        os.remove(path)
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute(DDL_SQLITE)
    con.executemany("INSERT INTO items VALUES (?, ?, ?, ?)", rows(n))
    con.commit()
    con.execute("ANALYZE")
    print("sqlite rows:", con.execute("SELECT COUNT(*) FROM items").fetchone()[0])
    con.close()


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--sqlite", required=True, help="path of the SQLite file to (re)create")
    p.add_argument("--skip-mariadb", action="store_true")
    p.add_argument("--skip-postgres", action="store_true")
    p.add_argument("--my-host", default="127.0.0.1")
    p.add_argument("--my-port", type=int, default=3306)
    p.add_argument("--my-user", default="bench")
    p.add_argument("--my-password", default="bench")
    p.add_argument("--my-db", default="bench")
    p.add_argument("--pg-host", default="127.0.0.1")
    p.add_argument("--pg-port", type=int, default=5432)
    p.add_argument("--pg-user", default="bench")
    p.add_argument("--pg-password", default="bench")
    p.add_argument("--pg-db", default="bench")
    a = p.parse_args()

    with tempfile.TemporaryDirectory() as td:
        csv_path = os.path.join(td, "items.csv")
        os.chmod(td, 0o755)  # server-side readers never need it (LOCAL / \copy), but be safe
        write_csv(csv_path, a.rows)
        if not a.skip_mariadb:
            load_mariadb(csv_path, a)
        if not a.skip_postgres:
            load_postgres(csv_path, a)
    load_sqlite(a.sqlite, a.rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
