"""``python -m ncbounds …`` runs the command line, like the ``ncbounds`` console script."""

from ncbounds.cli.main import main

if __name__ == "__main__":  # pragma: no cover
    main(prog_name="ncbounds")
