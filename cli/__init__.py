"""The command-line front end (click), installed as ``ncbounds.cli``: parse, call the library, render."""
