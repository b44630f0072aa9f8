"""``python -m ioc_sim --prefix P``: the same command as ``beamtwin ioc``."""

from ioc_sim.cli import ioc_command

if __name__ == "__main__":
    ioc_command(prog_name="python -m ioc_sim")
