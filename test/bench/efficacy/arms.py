#!/usr/bin/python3
"""The arms of the efficacy benchmark: one JSON file each in arms/, named
NN-name.json (NN orders them). Keys, all optional but `title`:

  title            short name for tables and plots
  about            one sentence for docs/efficacy.md
  enabled          false leaves the arm out (default true)
  traffic_control  {"budgets": [...], "rules": [...]}: the extension is
                   preloaded and the two settings are set with ALTER SYSTEM, so
                   the server's own check hook validates them; an arm whose
                   configuration the server rejects is skipped and the report
                   says why. Without this key the arm runs plain PostgreSQL.
  role_settings    {"role": {"setting": "value"}}: ALTER ROLE ... SET
  server_settings  {"setting": "value"}: postgresql.conf lines (at start)
  pgbouncer        {"pool_size": N, "pool_mode": "transaction"}: the analytics
                   role connects through PgBouncer with this pool

Used by run.sh (`arms.py name|enabled|conf|sql|expected|roles|uses-pgbouncer|
pgbouncer FILE ...`) and report.py.
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ARMS_DIR = os.path.join(HERE, "arms")


def arm_name(path):
    stem = os.path.splitext(os.path.basename(path))[0]
    prefix, _, rest = stem.partition("-")
    return rest if prefix.isdigit() and rest else stem


def load(path):
    with open(path) as f:
        arm = json.load(f)
    arm["name"] = arm_name(path)
    arm["file"] = os.path.relpath(path, HERE)
    return arm


def all_arms(arms_dir=ARMS_DIR):
    return [load(os.path.join(arms_dir, f)) for f in sorted(os.listdir(arms_dir)) if f.endswith(".json")]


def sql_literal(text):
    return "'" + str(text).replace("'", "''") + "'"


def conf_lines(arm):
    """postgresql.conf lines of the arm (appended after the common ones)."""
    lines = ["shared_preload_libraries = %s" % ("'traffic_control'" if "traffic_control" in arm else "''")]
    for key, value in arm.get("server_settings", {}).items():
        lines.append("%s = %s" % (key, sql_literal(value)))
    return lines


def tc_settings(arm):
    tc = arm.get("traffic_control", {})
    return {"traffic_control.budgets": json.dumps(tc.get("budgets", []), separators=(",", ":")),
            "traffic_control.rules": json.dumps(tc.get("rules", []), separators=(",", ":"))}


def sql_statements(arm):
    """What configures the arm in a running server; each statement on one line."""
    out = []
    for setting, value in tc_settings(arm).items() if "traffic_control" in arm else ():
        out.append("ALTER SYSTEM SET %s = %s;" % (setting, sql_literal(value)))
    for role, settings in arm.get("role_settings", {}).items():
        for key, value in settings.items():
            out.append('ALTER ROLE "%s" SET %s = %s;' % (role.replace('"', '""'), key, sql_literal(value)))
    out.append("SELECT pg_reload_conf();")
    return out


def pgbouncer_ini(arm, work, server_socket_dir, server_port, listen_port):
    pb = arm["pgbouncer"]
    return "\n".join([
        "[databases]",
        "postgres = host=%s port=%d dbname=postgres pool_size=%d" % (server_socket_dir, server_port,
                                                                     int(pb.get("pool_size", 1))),
        "[pgbouncer]",
        "listen_addr = 127.0.0.1",
        "listen_port = %d" % listen_port,
        "unix_socket_dir =",
        "auth_type = trust",
        "auth_file = %s/userlist.txt" % work,
        "pool_mode = %s" % pb.get("pool_mode", "transaction"),
        "default_pool_size = %d" % int(pb.get("pool_size", 1)),
        "max_client_conn = 200",
        "logfile = %s/pgbouncer.log" % work,
        "pidfile = %s/pgbouncer.pid" % work,
        "",
    ])


def main():
    cmd, path = sys.argv[1], sys.argv[2]
    arm = load(path)
    if cmd == "name":
        print(arm["name"])
    elif cmd == "enabled":
        print("yes" if arm.get("enabled", True) else "no")
    elif cmd == "conf":
        print("\n".join(conf_lines(arm)))
    elif cmd == "sql":
        print("\n".join(sql_statements(arm)))
    elif cmd == "expected":  # SHOW output the applied configuration must give
        for setting, value in tc_settings(arm).items() if "traffic_control" in arm else ():
            print("%s\t%s" % (setting, value))
    elif cmd == "roles":  # roles the arm changes
        for role in arm.get("role_settings", {}):
            print(role)
    elif cmd == "uses-pgbouncer":
        print("yes" if "pgbouncer" in arm else "no")
    elif cmd == "pgbouncer":
        work, sock, port, listen = sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
        sys.stdout.write(pgbouncer_ini(arm, work, sock, port, listen))
    else:
        sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main()
