"""The commands this package adds to `kubetune` (registered as `kubetune.commands` entry points)."""
