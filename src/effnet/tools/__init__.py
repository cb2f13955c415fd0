"""One module per `effnet` subcommand (see effnet.cli)."""
