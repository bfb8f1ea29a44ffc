"""python -m paysaga.ops.backup backup|restore ...: paysaga-backup or paysaga-restore."""

import sys

from paysaga.ops.backup.cli import backup_main, restore_main

COMMANDS = {"backup": backup_main, "restore": restore_main}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: python -m paysaga.ops.backup {{{','.join(COMMANDS)}}} ...")
    sys.exit(COMMANDS[sys.argv[1]](sys.argv[2:]))
